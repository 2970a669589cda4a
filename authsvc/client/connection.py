"""One gRPC channel to every authsvc machine behind a target.

The channel's service config does the work a hand-written client would get
wrong: round-robin over every address the target resolves to (on Fly,
`dns:///<app>.internal:50051` gives each machine's 6PN address), client-side
health checking so a machine that reports NOT_SERVING gets no calls, waiting
for a healthy machine within the call's deadline instead of failing at once
(unless `wait_for_ready=False`), and retries with backoff of calls that end in
UNAVAILABLE, for the methods that are safe to repeat. gRPC retries only calls
whose response headers have not arrived: a failed connection or a refused
stream, and an UNAVAILABLE the server sends before any header. Keepalive
pings stay within what the server accepts (`authsvc.server`: pings no more
often than every 5 s, dropped after 20 s).

The caller key goes on every call as `authorization: Bearer <key>`: as call
credentials on a TLS channel, and as call metadata on a plaintext one (gRPC
refuses call credentials on plaintext channels; inside Fly's 6PN, WireGuard
encrypts the traffic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from authsvc import __version__
from authsvc.client.errors import error_from_rpc

DEFAULT_TIMEOUT_SECONDS = 5.0
# The service whose health decides whether a machine gets calls. AuthService
# is SERVING once the machine can verify tokens; DataService also needs the
# database, and the overall "" needs both, so a database outage would stop
# token verification too. None turns client-side health checking off.
DEFAULT_HEALTH_SERVICE = "authsvc.v1.AuthService"

# The server permits pings every 5 s and answers them within 20 s; ping every
# 30 s, idle or not, so a machine that vanished without closing the connection
# (stopped, migrated) is noticed within 50 s.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000
# How long the channel waits, at most, before reconnecting to a machine that
# was down; gRPC's default of 120 s is long for machines on one private network.
MAX_RECONNECT_BACKOFF_MS = 5_000

# gRPC caps attempts at 5. Backoff before attempt n is random in
# [0, min(initial * multiplier^(n-1), max)].
RETRY_MAX_ATTEMPTS = 5
RETRY_INITIAL_BACKOFF_SECONDS = 0.1
RETRY_MAX_BACKOFF_SECONDS = 1.0
RETRY_BACKOFF_MULTIPLIER = 2.0
# Retries stop while failures outnumber successes by half the tokens, so a
# full outage is not multiplied by the retries.
RETRY_THROTTLE_MAX_TOKENS = 20
RETRY_THROTTLE_TOKEN_RATIO = 1.0

# Safe to send again after UNAVAILABLE: they change nothing. Writes and
# function calls are not retried on UNAVAILABLE, which can mean the
# connection broke after the transaction committed; gRPC still resends any
# call that never reached a server (transparent retry).
# authsvc sends no response headers before an error status, so its own
# UNAVAILABLE answers (database or keys unavailable on one Machine) are
# retried on another, as are failed connections.
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
RETRYABLE_METHODS = (
    ("authsvc.v1.AuthService", "VerifyToken"),
    ("authsvc.v1.AuthService", "VerifyTokens"),
    ("authsvc.v1.DataService", "Select"),
    ("authsvc.v1.DataService", "ReloadSchema"),
)
SERVICES = ("authsvc.v1.AuthService", "authsvc.v1.DataService")


def service_config(
    health_service: str | None, wait_for_ready: bool = True
) -> dict[str, Any]:
    """The channel's gRPC service config (as the JSON-shaped dict)."""
    retry_policy = {
        "maxAttempts": RETRY_MAX_ATTEMPTS,
        "initialBackoff": f"{RETRY_INITIAL_BACKOFF_SECONDS}s",
        "maxBackoff": f"{RETRY_MAX_BACKOFF_SECONDS}s",
        "backoffMultiplier": RETRY_BACKOFF_MULTIPLIER,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                # The most specific name wins: these methods retry, the rest
                # of both services only wait for a ready machine.
                "name": [
                    {"service": service, "method": method}
                    for service, method in RETRYABLE_METHODS
                ],
                "waitForReady": wait_for_ready,
                "retryPolicy": retry_policy,
            },
            {
                "name": [{"service": service} for service in SERVICES],
                "waitForReady": wait_for_ready,
            },
        ],
        "retryThrottling": {
            "maxTokens": RETRY_THROTTLE_MAX_TOKENS,
            "tokenRatio": RETRY_THROTTLE_TOKEN_RATIO,
        },
    }
    if health_service is not None:
        config["healthCheckConfig"] = {"serviceName": health_service}
    return config


def channel_options(
    health_service: str | None, wait_for_ready: bool = True
) -> list[tuple[str, Any]]:
    """Channel arguments: the service config, retries, keepalive, reconnects."""
    config = service_config(health_service, wait_for_ready)
    return [
        ("grpc.service_config", json.dumps(config)),
        # Only our service config: never one published in DNS TXT records.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging an idle connection (gRPC stops after 2 pings by default).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.primary_user_agent", f"authsvc-client/{__version__}"),
    ]


class Connection:
    """A channel to `target` shared by `AuthClient` and `DataClient`.

    `target` is a gRPC target: `dns:///myauth.internal:50051` on Fly,
    `localhost:50051` for `authsvc dev`. `key` is the calling app's key (None
    only when a TLS client certificate identifies the app). Pass
    `credentials` (for example `grpc.ssl_channel_credentials(...)`) for TLS;
    without, the channel is plaintext. `timeout` is each call's default
    deadline in seconds. `health_service` is the health service name that
    decides which machines get calls (None: no health checking). With
    `wait_for_ready=False` a call fails at once with `Unavailable` when no
    machine is ready, instead of waiting up to its deadline. `options` are
    extra channel arguments, appended last.

    Use it as an async context manager, or `await close()` when done.
    """

    def __init__(
        self,
        target: str,
        *,
        key: str | None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        health_service: str | None = DEFAULT_HEALTH_SERVICE,
        wait_for_ready: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be above 0 seconds, got {timeout}")
        if key is not None:
            # A key read from a file or a secret often ends in a newline,
            # which gRPC refuses in metadata with an error that names nothing.
            key = key.strip()
            if not key or not _PRINTABLE_ASCII.fullmatch(key):
                raise ValueError(
                    "key must be the caller key as printed by `authsvc caller-key` "
                    "(printable ASCII, e.g. asvc_…); this one is empty or holds "
                    "other characters"
                )
        self.target = target
        self.timeout = timeout
        arguments = [*channel_options(health_service, wait_for_ready), *options]

        if credentials is None:
            self._metadata: tuple[tuple[str, str], ...] = (
                (("authorization", f"Bearer {key}"),) if key is not None else ()
            )
            self.channel = grpc.aio.insecure_channel(target, options=arguments)
        else:
            self._metadata = ()
            if key is not None:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.access_token_call_credentials(key)
                )
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=arguments
            )

    async def call(
        self, method: Any, request: Any, timeout: float | None = None
    ) -> Any:
        """Call a stub method with the key and a deadline; raise `ClientError`."""
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; calls still running get CANCELLED after `grace`."""
        await self.channel.close(grace)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
