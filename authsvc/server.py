"""Wiring: one server process, its start-up and shutdown sequences.

Start-up: open the HTTP client, build the key set and verifier, open the
database pool (no connection yet), bind the port (a failed bind is fatal),
start serving with health NOT_SERVING, start the database probe, load the
keys, then mark AuthService SERVING. Background tasks keep the keys fresh and
report DataService's health as the database comes and goes; the overall
status `""` is SERVING only when every enabled service is.

Shutdown is the reverse: health NOT_SERVING, stop the background tasks, stop
taking calls, let in-flight calls finish within the grace period, close the
pool and the HTTP client.

Nothing here is process-global, so several worker processes can later share
one port on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authsvc import __version__
from authsvc.api.auth import SERVICE as AUTH_SERVICE
from authsvc.api.auth import SERVICE_NAME as AUTH_SERVICE_NAME
from authsvc.api.auth import AuthServicer
from authsvc.api.data import SERVICE as DATA_SERVICE
from authsvc.api.data import SERVICE_NAME as DATA_SERVICE_NAME
from authsvc.api.data import DataServicer
from authsvc.api.registry import add_unary_service
from authsvc.config import Settings
from authsvc.data.service import Database
from authsvc.errors import KeysUnavailable
from authsvc.tokens import KeySet, TokenVerifier

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_INTERVAL_MS = 5_000
KEY_RETRY_MIN_SECONDS = 1.0
KEY_RETRY_MAX_SECONDS = 30.0
HTTP_CONNECT_TIMEOUT_SECONDS = 3.0

OVERALL_HEALTH = ""


class BindError(Exception):
    """The listen address could not be bound; the message says which and why."""


def server_options() -> Sequence[tuple[str, Any]]:
    return (
        # gRPC Python enables SO_REUSEPORT by default, which lets a second
        # instance bind the same port silently. A mistake must fail loudly.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            MIN_CLIENT_PING_INTERVAL_MS,
        ),
        ("grpc.http2.max_ping_strikes", 0),
    )


class AuthsvcServer:
    """Owns everything one server process needs, from start to stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port: int | None = None

        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.jwks_timeout_seconds, connect=HTTP_CONNECT_TIMEOUT_SECONDS
            ),
            follow_redirects=False,
            headers={"user-agent": f"authsvc/{__version__}"},
        )
        jwks_url = settings.jwks_url
        self.keys = (
            KeySet(
                jwks_url,
                self._http,
                ttl_seconds=settings.jwks_ttl_seconds,
                cooldown_seconds=settings.jwks_cooldown_seconds,
                timeout_seconds=settings.jwks_timeout_seconds,
            )
            if jwks_url is not None
            else None
        )
        secret = settings.jwt_secret
        self.verifier = TokenVerifier(
            issuer=settings.require_issuer(),
            audiences=settings.audiences,
            leeway_seconds=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
            keys=self.keys,
            hs256_secret=secret.get_secret_value() if secret is not None else None,
        )
        self.health = health.aio.HealthServicer()
        self.database = Database(settings) if settings.database_url else None
        self._grpc = grpc.aio.server(options=server_options())
        self._serving: dict[str, bool] = {AUTH_SERVICE_NAME: False}
        if self.database is not None:
            self._serving[DATA_SERVICE_NAME] = False
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Bind, serve, load keys, mark health; return the bound port."""
        add_unary_service(self._grpc, AuthServicer(self.verifier), AUTH_SERVICE)
        if self.database is not None:
            await self.database.open()
            add_unary_service(
                self._grpc, DataServicer(self.verifier, self.database), DATA_SERVICE
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (*self._serving, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._grpc,
        )
        await self._publish_health()

        self.port = self._bind(self.settings.listen_addr)
        await self._grpc.start()
        logger.info(
            "listening addr=%s port=%d version=%s",
            self.settings.listen_addr,
            self.port,
            __version__,
        )

        if self.database is not None:
            self._background.append(
                asyncio.create_task(self.database.monitor(self._set_data_serving))
            )
        await self._load_keys_once()
        if self.keys is not None:
            self._background.append(
                asyncio.create_task(
                    self.keys.maintain(
                        retry_min_seconds=KEY_RETRY_MIN_SECONDS,
                        retry_max_seconds=KEY_RETRY_MAX_SECONDS,
                    )
                )
            )
        if self.verifier.ready:
            await self._set_serving(AUTH_SERVICE_NAME, True)
        else:
            self._background.append(asyncio.create_task(self._serve_when_ready()))
        return self.port

    async def stop(self) -> None:
        """Drain and stop; every step is bounded by the grace period."""
        grace = self.settings.shutdown_grace_seconds
        logger.info("shutting down grace_seconds=%g", grace)

        await self.health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task

        await self._grpc.stop(grace)
        if self.database is not None:
            await self.database.close(grace)
        await self._http.aclose()
        logger.info("stopped")

    def _bind(self, address: str) -> int:
        try:
            port = int(self._grpc.add_insecure_port(address))
        except RuntimeError as exc:
            raise BindError(
                f"cannot listen on {address}: the address is in use or not available "
                "on this machine (set AUTHSVC_LISTEN_ADDR)"
            ) from exc
        if port == 0:
            raise BindError(f"cannot listen on {address} (set AUTHSVC_LISTEN_ADDR)")
        return port

    async def _load_keys_once(self) -> None:
        if self.keys is None:
            return
        try:
            await self.keys.refresh()
        except KeysUnavailable as exc:  # KeySet logged the cause
            logger.warning("keys not loaded at start-up; will retry error=%s", exc)
        else:
            logger.info(
                "keys loaded url=%s keys=%d", self.keys.url, self.keys.key_count
            )

    async def _serve_when_ready(self) -> None:
        if self.keys is not None:
            await self.keys.wait_usable()
            await self._set_serving(AUTH_SERVICE_NAME, True)

    async def _set_data_serving(self, serving: bool) -> None:
        await self._set_serving(DATA_SERVICE_NAME, serving)

    async def _set_serving(self, service: str, serving: bool) -> None:
        if self._serving.get(service) == serving:
            return
        self._serving[service] = serving
        logger.info(
            "health service=%s status=%s",
            service,
            "SERVING" if serving else "NOT_SERVING",
        )
        await self._publish_health()

    async def _publish_health(self) -> None:
        """Each service's state, and the overall `""`: SERVING only if all are."""
        for service, serving in self._serving.items():
            await self.health.set(service, _status(serving))
        await self.health.set(OVERALL_HEALTH, _status(all(self._serving.values())))


def _status(serving: bool) -> Any:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


async def serve(settings: Settings) -> None:
    """Run one server until SIGTERM or SIGINT, then shut down gracefully."""
    server = AuthsvcServer(settings)
    await server.start()
    await wait_for_stop_signal()
    await server.stop()


async def wait_for_stop_signal() -> None:
    """Return on the first SIGTERM/SIGINT; a second one exits at once."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            logger.warning("second %s during shutdown: exiting now", name)
            logging.shutdown()
            os._exit(1)
        logger.info("received %s", name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()
