"""Regressions from attacking VerifyToken: each input once produced a wrong answer."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from tests.conftest import Keys, Refusal, Running, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import b64url, es256, hs256, supabase_claims

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _signed_raw(keys: Keys, header_json: str, payload_json: str) -> str:
    signing_input = f"{b64url(header_json.encode())}.{b64url(payload_json.encode())}"
    signature = keys.ec1.sign_raw(signing_input.encode())
    return f"{signing_input}.{b64url(signature)}"


async def test_lone_surrogate_in_alg_is_refused_not_unknown(
    server: Running, keys: Keys
) -> None:
    token = _signed_raw(keys, '{"alg":"\\ud800","kid":"ec-1"}', "{}")

    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "MALFORMED")


@pytest.mark.parametrize(
    "claims_json",
    [
        '"sub":"\\ud800"',
        '"email":"\\udc00"',
        '"org_id":"\\ud83d"',
        '"user_metadata":{"n":"\\ud800"}',
        '"\\ud800":1',
    ],
    ids=["sub", "email", "org_id", "nested-value", "claim-name"],
)
async def test_lone_surrogates_in_signed_claims_are_malformed(
    server: Running, keys: Keys, claims_json: str
) -> None:
    claims = supabase_claims()
    if claims_json.startswith('"sub"'):
        del claims["sub"]
    payload = json.dumps(claims, separators=(",", ":"))[:-1] + "," + claims_json + "}"
    token = _signed_raw(keys, '{"alg":"ES256","kid":"ec-1"}', payload)

    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "MALFORMED")


async def test_properly_paired_unicode_escapes_are_accepted(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(user_metadata={"name": "Zoë 🦊"}))

    response = await server.verify(token)

    assert response.user_metadata["name"] == "Zoë 🦊"


@pytest.mark.parametrize("extra", [5, None, {}, True, 1.5, ["x"]])
async def test_audience_list_with_a_non_string_entry_is_refused(
    server: Running, keys: Keys, extra: object
) -> None:
    token = es256(keys.ec1, supabase_claims(aud=["authenticated", extra]))

    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "BAD_AUDIENCE")


async def test_undecodable_request_message_is_invalid_argument(server: Running) -> None:
    """Field 1 (token) holding bytes that are not UTF-8."""
    call = server.channel.unary_unary(
        "/authsvc.v1.AuthService/VerifyToken",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\x0a\x02\xff\xfe", timeout=5)
    refusal = Refusal.of(caught.value)

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    assert "Unexpected" not in refusal.message


async def test_non_canonical_signature_encoding_is_malformed(
    server: Running, keys: Keys
) -> None:
    """Unused low bits set in the last character: the same bytes, another string."""
    header, payload, signature = hs256().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    twin = signature[:-1] + alphabet[last ^ 0b01]

    refusal = await server.refusal(f"{header}.{payload}.{twin}")

    assert refusal.reason == "MALFORMED"


async def test_bearer_prefix_gets_a_hint(server: Running, keys: Keys) -> None:
    refusal = await server.refusal("Bearer " + es256(keys.ec1))

    assert refusal.reason == "MALFORMED"
    assert "'Bearer '" in refusal.message


@pytest.mark.parametrize("member", ["q", "dp", "qi", "k", "oth"])
async def test_jwks_entries_with_private_members_are_skipped(
    start_server: StartServer, jwks: JwksStub, keys: Keys, member: str
) -> None:
    jwks.document = {"keys": [keys.ec1.jwk(), {**keys.rsa1.jwk(), member: "AQAB"}]}
    server = await start_server(jwks)

    assert server.server.keys is not None
    assert server.server.keys.key_count == 1


async def test_a_hung_refresh_after_the_ttl_does_not_stall_cached_keys(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(
        jwks, AUTHSVC_JWKS_TTL_SECONDS="1", AUTHSVC_JWKS_TIMEOUT_SECONDS="5"
    )
    jwks.delay_seconds = 30

    await asyncio.sleep(1.3)
    responses = [await server.verify(es256(keys.ec1), timeout=1) for _ in range(5)]

    assert {r.key_id for r in responses} == {"ec-1"}
