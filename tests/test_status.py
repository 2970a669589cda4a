"""The one translation of errors into gRPC statuses, seen through a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from authsvc.access import Caller, CallerSet, Gate
from authsvc.api.auth import SERVICE
from authsvc.api.registry import add_unary_service
from authsvc.errors import AuthsvcError, Reason, Status, Unavailable
from authsvc.ops.metrics import Metrics
from authsvc.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import Refusal


class _FailingServicer:
    """Raises whatever the request's token names, to exercise the boundary."""

    async def VerifyToken(
        self, request: auth_pb2.VerifyTokenRequest, context: Any, caller: Caller
    ) -> auth_pb2.VerifyTokenResponse:
        if request.token == "bug":
            raise RuntimeError("database password is hunter2")
        raise Unavailable(Reason.KEYS_UNAVAILABLE, "keys are away", {"why": "test"})

    async def VerifyTokens(
        self, request: auth_pb2.VerifyTokensRequest, context: Any, caller: Caller
    ) -> auth_pb2.VerifyTokensResponse:
        raise NotImplementedError("the registry needs every method of the service")


@pytest.fixture
async def stub() -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    server = grpc.aio.server()
    gate = Gate(
        CallerSet([]),
        allow_unauthenticated=True,
        networks=(),
        default_max_concurrent=0,
        default_rate=0,
    )
    add_unary_service(server, _FailingServicer(), SERVICE, gate, Metrics())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    await server.stop(0)


async def _refusal(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.VerifyToken(auth_pb2.VerifyTokenRequest(token=token), timeout=5)
    return Refusal.of(caught.value)


async def test_unexpected_exception_is_internal_with_an_error_id_that_is_logged(
    stub: auth_pb2_grpc.AuthServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = await _refusal(stub, "bug")

    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    error_id = refusal.metadata["error_id"]
    assert error_id in refusal.message
    assert "hunter2" not in refusal.message
    assert "Traceback" not in refusal.message
    assert f"error_id={error_id}" in caplog.text


async def test_our_errors_keep_their_code_reason_and_metadata(
    stub: auth_pb2_grpc.AuthServiceStub,
) -> None:
    refusal = await _refusal(stub, "unavailable")

    assert refusal.code == grpc.StatusCode.UNAVAILABLE
    assert (refusal.reason, refusal.domain) == ("KEYS_UNAVAILABLE", "authsvc")
    assert refusal.metadata == {"why": "test"}
    assert refusal.message == "keys are away"


def test_every_status_family_has_an_error_class() -> None:
    families = {cls.status for cls in _all_subclasses(AuthsvcError)}

    assert families >= set(Status) - {Status.INTERNAL}


def _all_subclasses(cls: type) -> set[type[AuthsvcError]]:
    found: set[type[AuthsvcError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found
