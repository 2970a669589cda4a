"""The key cache against a real JWKS endpoint: rotation, outages, storms (C01, C26)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import pytest

from authsvc.tokens import keys as keys_module
from tests.conftest import Keys, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import es256

TTL = 2.0


async def test_c01_rotated_in_key_costs_one_refetch_and_removed_key_stops_after_ttl(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    jwks.serve_keys(keys.ec1)
    server = await start_server(jwks, AUTHSVC_JWKS_TTL_SECONDS=str(TTL))
    await server.verify(es256(keys.ec1))
    hits_before = jwks.hits

    jwks.serve_keys(keys.ec1, keys.ec2)
    rotated = await server.verify(es256(keys.ec2))
    hits_after_rotation = jwks.hits

    jwks.serve_keys(keys.ec2)
    await asyncio.sleep(TTL + 0.2)
    refusal = await server.refusal(es256(keys.ec1))

    assert rotated.key_id == "ec-2"
    assert hits_after_rotation == hits_before + 1
    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNKNOWN_KEY",
    )


async def test_cached_keys_keep_serving_through_a_jwks_outage(
    start_server: StartServer,
    jwks: JwksStub,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(jwks, AUTHSVC_JWKS_TTL_SECONDS=str(TTL))
    await server.verify(es256(keys.ec1))

    jwks.status = 503
    await asyncio.sleep(TTL + 0.2)
    during_outage = await server.verify(es256(keys.ec1))

    assert during_outage.key_id == "ec-1"
    assert "serving cached keys" in caplog.text


@pytest.mark.parametrize(
    "failure",
    ["status-500", "garbage", "not-a-jwks", "hang"],
)
async def test_a_failed_refresh_never_replaces_the_good_key_set(
    start_server: StartServer, jwks: JwksStub, keys: Keys, failure: str
) -> None:
    server = await start_server(
        jwks, AUTHSVC_JWKS_TTL_SECONDS=str(TTL), AUTHSVC_JWKS_TIMEOUT_SECONDS="0.5"
    )
    await server.verify(es256(keys.ec1))

    if failure == "status-500":
        jwks.status = 500
    elif failure == "garbage":
        jwks.body = b"\x00\xffnot json"
    elif failure == "not-a-jwks":
        jwks.body = b'{"keys": "nope"}'
    else:
        jwks.delay_seconds = 30
    await asyncio.sleep(TTL + 0.2)
    response = await server.verify(es256(keys.ec1))

    assert response.key_id == "ec-1"
    assert server.server.keys is not None
    assert server.server.keys.last_error


async def test_random_kid_flood_is_bounded_by_the_cooldown(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks, AUTHSVC_JWKS_COOLDOWN_SECONDS="60")
    hits_before = jwks.hits
    flood = [es256(keys.ec1, kid=str(uuid.uuid4())) for _ in range(300)]

    refusals = await asyncio.gather(*(server.refusal(token) for token in flood))

    assert {r.reason for r in refusals} == {"UNKNOWN_KEY"}
    assert jwks.hits - hits_before <= 1


async def test_concurrent_misses_share_one_fetch(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks)
    hits_before = jwks.hits
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 0.3

    responses = await asyncio.gather(
        *(server.verify(es256(keys.ec2)) for _ in range(50))
    )

    assert {r.key_id for r in responses} == {"ec-2"}
    assert jwks.hits - hits_before == 1


async def test_c26_deadline_while_jwks_hangs_does_not_hold_up_other_calls(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks, AUTHSVC_JWKS_TIMEOUT_SECONDS="5")
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 3

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.verify(es256(keys.ec2), timeout=0.2)
    cached_key_meanwhile = await server.verify(es256(keys.ec1), timeout=1)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cached_key_meanwhile.key_id == "ec-1"


async def test_jwks_timeout_with_nothing_cached_is_unavailable(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    jwks.delay_seconds = 5
    server = await start_server(jwks, AUTHSVC_JWKS_TIMEOUT_SECONDS="0.3")

    refusal = await server.refusal(es256(keys.ec1))

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "KEYS_UNAVAILABLE",
    )
    assert "timed out" in refusal.message


def test_every_httpx_error_is_translated_by_the_key_fetcher() -> None:
    """A new httpx exception class must not escape as INTERNAL."""

    def subclasses(cls: type) -> set[type]:
        found = set()
        for sub in cls.__subclasses__():
            found |= {sub, *subclasses(sub)}
        return found

    raised_by_httpx = {
        cls
        for cls in subclasses(Exception)
        if cls.__module__.startswith("httpx") and not issubclass(cls, Warning)
    }
    untranslated = [
        cls.__name__
        for cls in raised_by_httpx
        if not issubclass(cls, keys_module.HTTPX_ERRORS)
    ]

    assert httpx.ConnectError in raised_by_httpx
    assert untranslated == []
