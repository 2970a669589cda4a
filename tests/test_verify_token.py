"""VerifyToken through a real gRPC server, with keys served over real HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from authsvc.errors import Reason
from tests.conftest import Keys, Running, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import (
    HS_SECRET,
    ISS,
    REMOVE,
    UID_A,
    b64url,
    b64url_json,
    es256,
    hs256,
    jws,
    rs256,
    supabase_claims,
)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256", "HS256"])
async def test_verify_token_returns_every_claim_typed_and_whole(
    server: Running, keys: Keys, algorithm: str
) -> None:
    claims = supabase_claims(
        email="ada@example.com",
        phone="+15550100",
        aal="aal2",
        org_id="org_42",
        user_role="admin",
        tier={"plan": "pro", "seats": 12},
    )
    token = {
        "ES256": lambda: es256(keys.ec1, claims),
        "RS256": lambda: rs256(keys.rsa1, claims),
        "HS256": lambda: hs256(HS_SECRET, claims),
    }[algorithm]()

    response = await server.verify(token)

    assert response.sub == UID_A
    assert response.email == "ada@example.com"
    assert response.phone == "+15550100"
    assert response.role == "authenticated"
    assert response.aal == "aal2"
    assert response.session_id == claims["session_id"]
    assert response.is_anonymous is False
    assert response.issuer == ISS
    assert list(response.audience) == ["authenticated"]
    assert response.issued_at.seconds == claims["iat"]
    assert response.expires_at.seconds == claims["exp"]
    assert dict(response.app_metadata) == {"provider": "email", "providers": ["email"]}
    assert dict(response.user_metadata) == {"name": "Ada"}
    assert response.org_id == "org_42"
    assert response.user_role == "admin"
    assert response.claims["tier"]["plan"] == "pro"
    assert response.claims["tier"]["seats"] == 12
    assert response.claims["amr"][0]["method"] == "password"
    assert set(response.claims.keys()) == set(claims)
    assert response.algorithm == algorithm
    assert (
        response.key_id == {"ES256": "ec-1", "RS256": "rsa-1", "HS256": ""}[algorithm]
    )


async def test_custom_claims_of_other_types_stay_in_claims(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(org_id=42, user_role=["a", "b"]))

    response = await server.verify(token)

    assert response.org_id == ""
    assert response.user_role == ""
    assert response.claims["org_id"] == 42
    assert list(response.claims["user_role"]) == ["a", "b"]


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json(supabase_claims(sub='someone-else'))}.{signature}"


def _cases(keys: Keys) -> dict[str, tuple[str, grpc.StatusCode, str]]:
    now = int(time.time())
    unauth = grpc.StatusCode.UNAUTHENTICATED
    return {
        "expired": (
            es256(keys.ec1, supabase_claims(exp=now - 600, iat=now - 4200)),
            unauth,
            "TOKEN_EXPIRED",
        ),
        "nbf-in-future": (
            es256(keys.ec1, supabase_claims(nbf=now + 600)),
            unauth,
            "TOKEN_NOT_YET_VALID",
        ),
        "iat-in-future": (
            es256(keys.ec1, supabase_claims(iat=now + 600)),
            unauth,
            "TOKEN_NOT_YET_VALID",
        ),
        "tampered-payload": (_tampered(es256(keys.ec1)), unauth, "BAD_SIGNATURE"),
        "signed-by-unpublished-key": (es256(keys.ec_evil), unauth, "BAD_SIGNATURE"),
        "hs256-wrong-secret": (hs256("x" * 40), unauth, "BAD_SIGNATURE"),
        "unknown-kid": (es256(keys.ec2), unauth, "UNKNOWN_KEY"),
        "missing-kid": (es256(keys.ec1, kid=REMOVE), unauth, "UNKNOWN_KEY"),
        "wrong-audience": (
            es256(keys.ec1, supabase_claims(aud="anon")),
            unauth,
            "BAD_AUDIENCE",
        ),
        "wrong-issuer": (
            es256(keys.ec1, supabase_claims(iss="https://zzzz.supabase.co/auth/v1")),
            unauth,
            "BAD_ISSUER",
        ),
        "missing-sub": (
            es256(keys.ec1, supabase_claims(sub=REMOVE)),
            unauth,
            "INVALID_CLAIM",
        ),
        "not-a-jwt": ("sb_secret_0123456789abcdef", unauth, "MALFORMED"),
        "two-segments": ("abc.def", unauth, "MALFORMED"),
        "alg-none": (
            jws({"alg": "none", "typ": "JWT"}, supabase_claims(), None) + "AA",
            unauth,
            "ALGORITHM_NOT_ALLOWED",
        ),
        "alg-hs512": (
            jws({"alg": "HS512", "typ": "JWT"}, supabase_claims(), HS_SECRET),
            unauth,
            "ALGORITHM_NOT_ALLOWED",
        ),
        "rs256-header-on-ec-key": (
            rs256(keys.rsa1, kid="ec-1"),
            unauth,
            "ALGORITHM_NOT_ALLOWED",
        ),
        "jku-header": (
            es256(keys.ec1, jku="https://attacker.example/jwks.json"),
            unauth,
            "HEADER_NOT_ALLOWED",
        ),
        "empty": ("", grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_MISSING"),
        "over-16-kib": (
            "a" * (16 * 1024 + 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TOKEN_TOO_LARGE",
        ),
    }


CASE_NAMES = [
    "expired",
    "nbf-in-future",
    "iat-in-future",
    "tampered-payload",
    "signed-by-unpublished-key",
    "hs256-wrong-secret",
    "unknown-kid",
    "missing-kid",
    "wrong-audience",
    "wrong-issuer",
    "missing-sub",
    "not-a-jwt",
    "two-segments",
    "alg-none",
    "alg-hs512",
    "rs256-header-on-ec-key",
    "jku-header",
    "empty",
    "over-16-kib",
]


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_invalid_token_is_refused_with_its_documented_reason(
    server: Running, keys: Keys, case: str
) -> None:
    token, code, reason = _cases(keys)[case]

    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (code, reason)
    assert refusal.domain == "authsvc"
    assert refusal.message
    assert not token or token[-20:] not in refusal.message


def test_every_reason_is_documented_in_the_proto() -> None:
    protos = Path(__file__).parents[1] / "protos" / "authsvc" / "v1"
    proto = "".join(p.read_text() for p in protos.glob("*.proto"))

    missing = [reason.value for reason in Reason if reason.value not in proto]

    assert missing == []


async def test_expired_token_reports_when_it_expired(
    server: Running, keys: Keys
) -> None:
    exp = int(time.time()) - 600

    refusal = await server.refusal(
        es256(keys.ec1, supabase_claims(exp=exp, iat=exp - 3600))
    )

    assert refusal.reason == "TOKEN_EXPIRED"
    assert refusal.metadata["expired_at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)
    )


async def test_reject_anonymous_refuses_anonymous_sign_ins_only(
    server: Running, keys: Keys
) -> None:
    anonymous = es256(keys.ec1, supabase_claims(is_anonymous=True, email=""))
    permanent = es256(keys.ec1)

    plain = await server.verify(anonymous)
    refusal = await server.refusal(anonymous, reject_anonymous=True)
    kept = await server.verify(permanent, reject_anonymous=True)

    assert plain.is_anonymous is True
    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ANONYMOUS_NOT_ALLOWED",
    )
    assert kept.sub == UID_A


async def test_hs256_token_signed_with_the_public_key_is_refused(
    server: Running, keys: Keys
) -> None:
    """Algorithm confusion: the EC public key (PEM) used as an HMAC secret."""
    from cryptography.hazmat.primitives import serialization

    pem = (
        keys.ec1.private.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )

    refusal = await server.refusal(hs256(pem, kid="ec-1"))

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "BAD_SIGNATURE",
    )


async def test_hs256_token_is_refused_when_no_secret_is_configured(
    start_server: StartServer, jwks: JwksStub
) -> None:
    server = await start_server(jwks)

    refusal = await server.refusal(hs256())

    assert refusal.reason == "ALGORITHM_NOT_ALLOWED"
    assert "HS256" in refusal.message


async def test_signature_segment_with_bad_base64_length_is_malformed(
    server: Running, keys: Keys
) -> None:
    header, payload, signature = es256(keys.ec1).split(".")

    refusal = await server.refusal(f"{header}.{payload}.{signature}A")

    assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
    assert refusal.reason in {"MALFORMED", "BAD_SIGNATURE"}


async def test_payload_with_duplicate_keys_is_malformed(
    server: Running, keys: Keys
) -> None:
    """Two `sub` members: parsers disagree on which wins, so refuse both."""
    claims = json.dumps(supabase_claims(), separators=(",", ":"))
    duplicated = claims[:-1] + ',"sub":"33333333-3333-3333-3333-333333333333"}'
    header = b64url_json({"alg": "ES256", "kid": "ec-1"})
    signing_input = f"{header}.{b64url(duplicated.encode())}".encode()
    token = f"{signing_input.decode()}.{b64url(keys.ec1.sign_raw(signing_input))}"

    refusal = await server.refusal(token)

    assert refusal.reason == "MALFORMED"
