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
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authsvc import __version__
from authsvc.access import CallerConfigError, CallerSet, Gate
from authsvc.access.network import parse_networks
from authsvc.api.auth import SERVICE as AUTH_SERVICE
from authsvc.api.auth import SERVICE_NAME as AUTH_SERVICE_NAME
from authsvc.api.auth import AuthServicer
from authsvc.api.data import SERVICE as DATA_SERVICE
from authsvc.api.data import SERVICE_NAME as DATA_SERVICE_NAME
from authsvc.api.data import DataServicer
from authsvc.api.registry import add_unary_service
from authsvc.config import ConfigError, Settings
from authsvc.data.service import Database
from authsvc.errors import KeysUnavailable
from authsvc.ops.http import (
    LIVENESS_PATH,
    METRICS_PATH,
    READINESS_PATH,
    OpsServer,
    Readiness,
)
from authsvc.ops.metrics import Metrics
from authsvc.tokens import KeySet, TokenVerifier
from authsvc.workers import report_ready, stop_with_parent

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_INTERVAL_MS = 5_000
MAX_CONNECTION_AGE_GRACE_MS = 30_000
KEY_RETRY_MIN_SECONDS = 1.0
KEY_RETRY_MAX_SECONDS = 30.0
HTTP_CONNECT_TIMEOUT_SECONDS = 3.0
CALLERS_POLL_SECONDS = 1.0
MAX_CALLERS_FILE_BYTES = 1024 * 1024

OVERALL_HEALTH = ""


class BindError(Exception):
    """The listen address could not be bound; the message says which and why."""


def server_options(settings: Settings) -> Sequence[tuple[str, Any]]:
    return (
        # gRPC Python enables SO_REUSEPORT by default, which lets a second
        # instance bind the same port silently. A mistake must fail loudly.
        # Worker processes of one `authsvc serve` share the port on purpose;
        # the supervisor checked it was free first.
        ("grpc.so_reuseport", 0 if settings.worker_report_fd is None else 1),
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # One limit, not a soft one that refuses some requests at random and
        # a hard one above it (C25).
        ("grpc.max_metadata_size", settings.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        # gRPC core (1.85) closes a connection whose ping goes unanswered
        # after the ping timeout (default 60 s), not after keepalive_timeout:
        # both are set so a dead peer is dropped within time + timeout (C24).
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC clients resolve `<app>.internal` again only when a connection
        # ends, so without an age limit a new Machine would never get calls
        # from clients already connected. After this age the server sends
        # GOAWAY; calls in progress get the grace period to finish, and the
        # client reconnects (re-resolving) for the next one.
        (
            "grpc.max_connection_age_ms",
            round(settings.max_connection_age_seconds * 1000),
        ),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
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
            cache_entries=settings.token_cache_entries,
            cache_bytes=settings.token_cache_mb * 1024 * 1024,
        )
        self.metrics = Metrics()
        self.verifier.on_result = self.metrics.observe_verification
        self.metrics.track_token_cache(self.verifier.cache)
        if self.keys is not None:
            self.keys.on_fetch = self.metrics.observe_jwks_fetch
            keys = self.keys
            self.metrics.track_keyset(lambda: keys.age_seconds, lambda: keys.key_count)
        self.ops_port: int | None = None
        self._ops = OpsServer(self._exposition, self._readiness)
        self._stopping = False
        self.health = health.aio.HealthServicer()
        self.database = Database(settings) if settings.database_url else None
        self.gate = Gate(
            load_callers(settings),
            allow_unauthenticated=settings.allow_unauthenticated,
            networks=parse_networks(settings.allowed_networks),
            default_max_concurrent=settings.caller_max_concurrent,
            default_rate=settings.caller_requests_per_second,
        )
        self._callers_stamp = _file_stamp(settings.callers_file)
        logger.info(
            "callers loaded callers=%d names=%s source=%s",
            len(self.gate.callers),
            ",".join(caller.name for caller in self.gate.callers.callers) or "-",
            settings.summary()["callers"],
        )
        self._grpc = grpc.aio.server(options=server_options(settings))
        self._serving: dict[str, bool] = {AUTH_SERVICE_NAME: False}
        if self.database is not None:
            self._serving[DATA_SERVICE_NAME] = False
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Bind, serve, load keys, mark health; return the bound port."""
        add_unary_service(
            self._grpc,
            AuthServicer(
                self.verifier,
                max_batch_tokens=self.settings.max_batch_tokens,
                max_response_bytes=MAX_MESSAGE_BYTES,
            ),
            AUTH_SERVICE,
            self.gate,
            self.metrics,
            log_successes=self.settings.access_log == "all",
        )
        if self.database is not None:
            await self.database.open()
            add_unary_service(
                self._grpc,
                DataServicer(self.verifier, self.database, self.metrics),
                DATA_SERVICE,
                self.gate,
                self.metrics,
                log_successes=self.settings.access_log == "all",
            )
            database = self.database
            self.metrics.track_pool(
                database.connections,
                database.connections_in_use,
                database.requests_waiting,
                database.max_connections,
                database.pooled,
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                (*self._serving, health.SERVICE_NAME, reflection.SERVICE_NAME),
                self._grpc,
            )
        await self._publish_health()

        self.port = self._bind(self.settings.listen_addr)
        await self._grpc.start()
        logger.info(
            "listening addr=%s port=%d version=%s loop=%s",
            self.settings.listen_addr,
            self.port,
            __version__,
            type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )
        await self._start_ops()

        if self.database is not None:
            self._background.append(
                asyncio.create_task(self.database.monitor(self._set_data_serving))
            )
        if self.settings.callers_file is not None:
            self._background.append(asyncio.create_task(self._watch_callers_file()))
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
        if self._stopping:
            return
        grace = self.settings.shutdown_grace_seconds
        logger.info("shutting down grace_seconds=%g", grace)

        # /readyz answers 503 from here on, like gRPC health.
        self._stopping = True
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
        await self._ops.stop()
        logger.info("stopped")

    async def _exposition(self) -> bytes:
        return self.metrics.exposition()

    async def _readiness(self, service: str) -> Readiness | None:
        return self.readiness(service)

    def readiness(self, service: str) -> Readiness | None:
        """What gRPC health says for `service` (`""`: overall); None if unknown."""
        if service == OVERALL_HEALTH:
            failing = tuple(
                name for name, ok in self._serving.items() if self._stopping or not ok
            )
            return Readiness(not failing, failing)
        if service not in self._serving:
            return None
        serving = self._serving[service] and not self._stopping
        return Readiness(serving, () if serving else (service,))

    async def _start_ops(self) -> None:
        where = self.settings.metrics_host_port
        if where is None:
            return
        host, port = where
        try:
            self.ops_port = await self._ops.start(host, port)
        except OSError as exc:
            raise BindError(
                f"cannot listen on {self.settings.metrics_addr} for metrics and "
                f"health: {exc.strerror or exc} (set AUTHSVC_METRICS_ADDR, or off)"
            ) from exc
        logger.info(
            "ops listening addr=%s port=%d paths=%s,%s,%s",
            self.settings.metrics_addr,
            self.ops_port,
            METRICS_PATH,
            LIVENESS_PATH,
            READINESS_PATH,
        )

    async def reload_callers(self, trigger: str = "SIGHUP") -> bool:
        """Reread the callers file; on any problem keep the current callers."""
        if self.settings.callers_file is None:
            logger.warning(
                "callers not reloaded: they come from AUTHSVC_CALLERS, which a "
                "running process cannot reread (use AUTHSVC_CALLERS_FILE)"
            )
            return False
        self._callers_stamp = _file_stamp(self.settings.callers_file)
        try:
            # In a thread: a slow disk (or a FIFO swapped in) never stalls calls.
            callers = await asyncio.to_thread(load_callers, self.settings)
        except ConfigError as exc:
            logger.error(
                "callers not reloaded; keeping the current ones trigger=%s: %s",
                trigger,
                exc,
            )
            return False
        except Exception:
            logger.exception(
                "callers not reloaded; keeping the current ones trigger=%s", trigger
            )
            return False
        self.gate.replace(callers)
        logger.info("callers reloaded callers=%d trigger=%s", len(callers), trigger)
        return True

    async def _watch_callers_file(self) -> None:
        path = self.settings.callers_file
        while True:
            await asyncio.sleep(CALLERS_POLL_SECONDS)
            stamp = _file_stamp(path)
            if stamp == self._callers_stamp:
                continue
            # A file written in place is read only once it stops changing, so
            # a half-written one (a caller without its narrowing) is never used.
            await asyncio.sleep(CALLERS_POLL_SECONDS)
            if _file_stamp(path) == stamp:
                await self.reload_callers("file-change")

    def _bind(self, address: str) -> int:
        try:
            credentials = _server_credentials(self.settings)
            if credentials is None:
                port = int(self._grpc.add_insecure_port(address))
            else:
                port = int(self._grpc.add_secure_port(address, credentials))
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


def load_callers(settings: Settings) -> CallerSet:
    """The configured callers; ConfigError if they cannot be used."""
    source = "AUTHSVC_CALLERS"
    text = ""
    if settings.callers_file is not None:
        source = f"AUTHSVC_CALLERS_FILE={settings.callers_file}"
        text = _read_callers_file(settings.callers_file, source)
    elif settings.callers is not None:
        text = settings.callers.get_secret_value()
    try:
        callers = CallerSet.parse(text)
    except CallerConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None

    if not callers and settings.db_allow_admin and settings.database_url:
        raise ConfigError(
            "AUTHSVC_DB_ALLOW_ADMIN=true but no callers are configured: anyone who "
            "reaches the port could bypass row-level security. Configure callers "
            "(AUTHSVC_CALLERS or AUTHSVC_CALLERS_FILE; `authsvc caller-key` makes "
            "a key) and grant data:admin to the apps that need it"
        )
    if not callers and not settings.allow_unauthenticated:
        raise ConfigError(
            "no callers are configured: set AUTHSVC_CALLERS or AUTHSVC_CALLERS_FILE "
            "(`authsvc caller-key` makes a key and prints its hash), or set "
            "AUTHSVC_ALLOW_UNAUTHENTICATED=true to let any app that reaches the "
            "port verify tokens and query as a user"
        )
    return callers


def _read_callers_file(path: str, source: str) -> str:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{source}: cannot read it (not a regular file)")
        if info.st_size > MAX_CALLERS_FILE_BYTES:
            raise ConfigError(
                f"{source}: cannot read it (larger than {MAX_CALLERS_FILE_BYTES} bytes)"
            )
        with open(path, encoding="utf-8") as file:
            return file.read(MAX_CALLERS_FILE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read it ({exc})") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        chain = Path(settings.tls_cert_file).read_bytes()
        key = Path(settings.tls_key_file).read_bytes()
        client_ca = (
            Path(settings.tls_client_ca_file).read_bytes()
            if settings.tls_client_ca_file is not None
            else None
        )
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from None
    # With a client CA, a client certificate is required: it may name the
    # caller (tls_names), and a key can still be sent alongside.
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _file_stamp(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _status(serving: bool) -> Any:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


async def serve(settings: Settings) -> None:
    """Run one server until SIGTERM or SIGINT, then shut down gracefully."""
    if settings.worker_index is not None:
        stop_with_parent()
    server = AuthsvcServer(settings)
    try:
        port = await server.start()
    except BaseException:
        # Release what start() had opened (the gRPC port, the pool) before
        # the error reaches the CLI, so the process exits cleanly.
        await server.stop()
        raise
    report_ready(settings, port, server.ops_port)
    await wait_for_stop_signal(on_reload=server.reload_callers)
    await server.stop()


async def wait_for_stop_signal(
    on_reload: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Return on the first SIGTERM/SIGINT; a second one exits at once.
    SIGHUP runs `on_reload` (the callers file is reread)."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[object]] = set()
    if on_reload is not None:
        reload = on_reload

        def on_hangup() -> None:
            task = asyncio.ensure_future(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
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
