"""Shared fixtures: keys, a steerable JWKS endpoint, and real servers on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2_grpc
from grpc_status import rpc_status

from authsvc.config import Settings
from authsvc.server import AuthsvcServer
from authsvc.v1 import auth_pb2, auth_pb2_grpc
from tests.support.callers import TEST_CALLER_KEY, TEST_CALLERS, caller_channel
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import HS_SECRET, SUPABASE_URL, EcKey, RsaKey


@dataclass(frozen=True)
class Keys:
    ec1: EcKey
    ec2: EcKey
    rsa1: RsaKey
    ec_evil: EcKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        ec1=EcKey.generate("ec-1"),
        ec2=EcKey.generate("ec-2"),
        rsa1=RsaKey.generate("rsa-1"),
        ec_evil=EcKey.generate("ec-1"),  # same kid as EC1, never published
    )


@pytest.fixture
async def jwks(keys: Keys) -> AsyncIterator[JwksStub]:
    stub = await JwksStub().start()
    stub.serve_keys(keys.ec1, keys.rsa1)
    yield stub
    await stub.close()


@dataclass
class Running:
    server: AuthsvcServer
    channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthServiceStub
    health: health_pb2_grpc.HealthStub
    target: str

    async def verify(
        self, token: str, *, reject_anonymous: bool = False, timeout: float = 10
    ) -> auth_pb2.VerifyTokenResponse:
        return await self.auth.VerifyToken(
            auth_pb2.VerifyTokenRequest(token=token, reject_anonymous=reject_anonymous),
            timeout=timeout,
        )

    async def refusal(self, token: str, **kwargs: Any) -> Refusal:
        """Verify a token that must fail; return what the client saw."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.verify(token, **kwargs)
        return Refusal.of(caught.value)


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    message: str

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> Refusal:
        status = rpc_status.from_call(error)
        info = error_details_pb2.ErrorInfo()
        if status is not None:
            for detail in status.details:
                detail.Unpack(info)
        return cls(
            code=error.code(),
            reason=info.reason,
            domain=info.domain,
            metadata=dict(info.metadata),
            message=error.details() or "",
        )


StartServer = Callable[..., Awaitable[Running]]


def base_environ(jwks: JwksStub | None, **overrides: str) -> dict[str, str]:
    environ = {
        "SUPABASE_URL": SUPABASE_URL,
        "AUTHSVC_JWKS_URL": jwks.url if jwks is not None else "off",
        "AUTHSVC_LISTEN_ADDR": "127.0.0.1:0",
        "AUTHSVC_SHUTDOWN_GRACE_SECONDS": "1",
        "AUTHSVC_JWKS_COOLDOWN_SECONDS": "0",
        "AUTHSVC_CALLERS": TEST_CALLERS,
        "AUTHSVC_METRICS_ADDR": "127.0.0.1:0",
    }
    environ.update(overrides)
    return environ


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start real servers on ephemeral ports; stop them after the test."""
    running: list[Running] = []

    async def start(jwks: JwksStub | None, **env: str) -> Running:
        server = AuthsvcServer(Settings.from_environ(base_environ(jwks, **env)))
        port = await server.start()
        target = f"127.0.0.1:{port}"
        channel = caller_channel(target, TEST_CALLER_KEY)
        handle = Running(
            server=server,
            channel=channel,
            auth=auth_pb2_grpc.AuthServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            target=target,
        )
        running.append(handle)
        return handle

    yield start

    for handle in running:
        await handle.channel.close()
        await handle.server.stop()


@pytest.fixture
async def server(start_server: StartServer, jwks: JwksStub) -> Running:
    """A server on the JWKS stub (EC1 and RSA1) with the legacy secret too."""
    return await start_server(jwks, SUPABASE_JWT_SECRET=HS_SECRET)
