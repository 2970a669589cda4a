"""The token cases from shared/cases (C04, C05, C06, C08, C09, C10, C11, C25)."""

from __future__ import annotations

import base64
import time

import grpc
import pytest

from tests.conftest import Keys, Running, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import (
    HS_SECRET,
    ISS,
    REF,
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

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


# C04: missing kid, unusable JWKS entries, error classification.


async def test_c04_odd_jwks_entries_are_skipped_one_by_one(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    jwks.document = {
        "keys": [
            keys.ec1.jwk(kid=REMOVE),
            keys.ec2.jwk(),
            {**keys.rsa1.jwk(), "use": "enc", "kid": "enc-1"},
            {"kty": "OKP", "crv": "X25519", "x": b64url(b"x" * 32), "kid": "x-1"},
            {"kty": "EC", "crv": "P-256", "x": "!!", "y": "??", "kid": "broken"},
            "not an object",
        ]
    }
    server = await start_server(jwks)

    response = await server.verify(es256(keys.ec2))

    assert response.key_id == "ec-2"
    assert server.server.keys is not None
    assert server.server.keys.key_count == 1


async def test_c04_asymmetric_token_without_kid_is_refused_without_a_refetch(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks)
    hits = jwks.hits

    refusal = await server.refusal(es256(keys.ec1, kid=REMOVE))

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "UNKNOWN_KEY")
    assert "kid" in refusal.message
    assert jwks.hits == hits


NOT_UTF8 = b64url(bytes([0xFF, 0xFE, 0xFD]))
MALFORMED_TOKENS = {
    "two-parts": "abc.def",
    "non-base64-parts": "a!.b!.c!",
    "header-is-array": f"{b64url_json([])}.{b64url_json({})}.AAAA",
    "four-parts": "a.b.c.d",
    "header-not-utf8": f"{NOT_UTF8}.{b64url_json({})}.AAAA",
    "header-not-json": f"{b64url(b'hello')}.{b64url_json({})}.AAAA",
    "padding": "eyJhbGciOiJFUzI1NiJ9.e30=.AAAA",
    "spaces": "eyJhbGciOiJFUzI1NiJ9. e30.AAAA",
    "non-ascii": "eyJhbGciOiJFUzI1NiJ9.é.AAAA",
    "nul-byte": "eyJhbGciOiJFUzI1NiJ9.e30\x00.AAAA",
}


@pytest.mark.parametrize("token", MALFORMED_TOKENS.values(), ids=MALFORMED_TOKENS)
async def test_c04_malformed_tokens_are_unauthenticated_never_internal(
    server: Running, token: str
) -> None:
    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "MALFORMED")


async def test_c04_jwks_down_with_nothing_cached_is_unavailable(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    jwks.status = 503
    server = await start_server(jwks)

    refusal = await server.refusal(es256(keys.ec2))

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "KEYS_UNAVAILABLE",
    )
    assert "HTTP 503" in refusal.message


# C05: ES256 signatures are raw R||S, fixed width; DER and trimmed forms fail.


def _signature_halves(token: str) -> tuple[bytes, bytes]:
    signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    return signature[:32], signature[32:]


async def test_c05_every_es256_signature_verifies_including_leading_zero_halves(
    server: Running, keys: Keys
) -> None:
    tokens = [es256(keys.ec1, supabase_claims(jti=str(n))) for n in range(2000)]
    lead0 = [t for t in tokens if 0 in (h[0] for h in _signature_halves(t))]

    for token in [tokens[0], *lead0]:
        await server.verify(token)

    assert lead0, "2000 signatures should include some with a leading zero byte"


async def test_c05_der_trimmed_and_cross_algorithm_signatures_are_refused(
    server: Running, keys: Keys
) -> None:
    header = b64url_json({"alg": "ES256", "kid": "ec-1", "typ": "JWT"})
    payload = b64url_json(supabase_claims())
    signing_input = f"{header}.{payload}".encode()
    der = f"{header}.{payload}.{b64url(keys.ec1.sign_der(signing_input))}"
    while True:
        token = es256(keys.ec1, supabase_claims(jti=str(time.time_ns())))
        r, s = _signature_halves(token)
        if r[0] == 0 or s[0] == 0:
            break
    trimmed_sig = (r[1:] + s) if r[0] == 0 else (r + s[1:])
    trimmed = token.rsplit(".", 1)[0] + "." + b64url(trimmed_sig)
    rs_on_ec = rs256(keys.rsa1, kid="ec-1")
    padded = es256(keys.ec1) + "=="

    results = [await server.refusal(t) for t in (der, trimmed, rs_on_ec, padded)]

    assert [r.code for r in results] == [UNAUTHENTICATED] * 4
    assert [r.reason for r in results] == [
        "BAD_SIGNATURE",
        "BAD_SIGNATURE",
        "ALGORITHM_NOT_ALLOWED",
        "MALFORMED",
    ]


# C06: iat/nbf in the future and leeway (30 s by default).


def _now() -> int:
    return int(time.time())


LEEWAY_CASES = {
    "iat+5": (lambda n: {"iat": n + 5}, None),
    "iat+600": (lambda n: {"iat": n + 600}, "TOKEN_NOT_YET_VALID"),
    "iat-string": (lambda n: {"iat": "yesterday"}, "INVALID_CLAIM"),
    "nbf+5": (lambda n: {"nbf": n + 5}, None),
    "nbf+600": (lambda n: {"nbf": n + 600}, "TOKEN_NOT_YET_VALID"),
    "exp-10": (lambda n: {"exp": n - 10, "iat": n - 3610}, None),
    "exp-120": (lambda n: {"exp": n - 120, "iat": n - 3720}, "TOKEN_EXPIRED"),
    "exp-missing": (lambda n: {"exp": REMOVE}, "INVALID_CLAIM"),
    "exp-1e20": (lambda n: {"exp": 1e20}, "INVALID_CLAIM"),
    "exp-true": (lambda n: {"exp": True}, "INVALID_CLAIM"),
    "exp-string": (lambda n: {"exp": str(n + 60)}, "INVALID_CLAIM"),
    "exp-fractional": (lambda n: {"exp": n + 60.5}, None),
    "exp-negative": (lambda n: {"exp": -1}, "INVALID_CLAIM"),
}


@pytest.mark.parametrize("case", LEEWAY_CASES.values(), ids=LEEWAY_CASES)
async def test_c06_time_claims_follow_the_leeway_rules(
    server: Running, keys: Keys, case: tuple[object, str | None]
) -> None:
    make_claims, reason = case
    token = es256(keys.ec1, supabase_claims(**make_claims(_now())))  # type: ignore[operator]

    if reason is None:
        await server.verify(token)
    else:
        refusal = await server.refusal(token)
        assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, reason)
        assert token.split(".")[1] not in refusal.message


async def test_c06_leeway_is_configurable(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks, AUTHSVC_LEEWAY_SECONDS="0")
    n = _now()

    refusal = await server.refusal(
        es256(keys.ec1, supabase_claims(exp=n - 10, iat=n - 100))
    )

    assert refusal.reason == "TOKEN_EXPIRED"


# C08: aud as a string or an array.

AUDIENCES_ACCEPTED = {
    "string": "authenticated",
    "array": ["authenticated"],
    "array-with-other": ["authenticated", "other"],
}
AUDIENCES_REFUSED = {
    "other-only": ["other"],
    "wrong-case": "Authenticated",
    "empty-string": "",
    "empty-array": [],
    "missing": REMOVE,
    "number": 42,
    "object": {"x": 1},
    "array-of-null": [None],
}


@pytest.mark.parametrize("aud", AUDIENCES_ACCEPTED.values(), ids=AUDIENCES_ACCEPTED)
async def test_c08_accepted_audience_shapes(
    server: Running, keys: Keys, aud: object
) -> None:
    response = await server.verify(es256(keys.ec1, supabase_claims(aud=aud)))

    assert list(response.audience) == ([aud] if isinstance(aud, str) else aud)


@pytest.mark.parametrize("aud", AUDIENCES_REFUSED.values(), ids=AUDIENCES_REFUSED)
async def test_c08_other_audiences_are_refused(
    server: Running, keys: Keys, aud: object
) -> None:
    refusal = await server.refusal(es256(keys.ec1, supabase_claims(aud=aud)))

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "BAD_AUDIENCE")


async def test_c08_audiences_are_configurable(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks, AUTHSVC_AUDIENCES="internal, partners")

    accepted = await server.verify(es256(keys.ec1, supabase_claims(aud="partners")))
    refusal = await server.refusal(es256(keys.ec1))

    assert list(accepted.audience) == ["partners"]
    assert refusal.reason == "BAD_AUDIENCE"


# C09: migrating from the legacy HS256 secret to asymmetric keys.


async def test_c09_legacy_only_project_with_empty_jwks_serves_hs256(
    start_server: StartServer, jwks: JwksStub
) -> None:
    jwks.document = {"keys": []}
    server = await start_server(jwks, SUPABASE_JWT_SECRET=HS_SECRET)

    response = await server.verify(hs256())

    assert response.algorithm == "HS256"


async def test_c09_during_migration_both_verifiers_work_and_hs_kid_needs_no_jwks(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks, SUPABASE_JWT_SECRET=HS_SECRET)
    hits = jwks.hits

    asymmetric = await server.verify(es256(keys.ec1))
    legacy = await server.verify(hs256())
    legacy_with_kid = await server.verify(hs256(kid="legacy-abc"))

    assert [asymmetric.algorithm, legacy.algorithm, legacy_with_kid.algorithm] == [
        "ES256",
        "HS256",
        "HS256",
    ]
    assert jwks.hits == hits


async def test_c09_after_the_secret_is_revoked_hs256_fails_and_es256_works(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    server = await start_server(jwks)

    refusal = await server.refusal(hs256())
    response = await server.verify(es256(keys.ec1))

    assert refusal.reason == "ALGORITHM_NOT_ALLOWED"
    assert response.algorithm == "ES256"


async def test_c09_secret_only_configuration_refuses_es256_clearly(
    start_server: StartServer, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(None, SUPABASE_JWT_SECRET=HS_SECRET)

    first = await server.refusal(es256(keys.ec1))
    second = await server.refusal(es256(keys.ec1))

    assert (first.code, first.reason) == (UNAUTHENTICATED, "ALGORITHM_NOT_ALLOWED")
    assert "no verifier is configured for ES256" in first.message
    assert second.reason == first.reason
    warnings = [r for r in caplog.records if "no verifier configured" in r.message]
    assert len(warnings) == 1


# C10: the issuer is bound; key URLs never come from the token.

WRONG_ISSUERS = {
    "other-project": "https://zzzzzzzzzzzzzzzzzzzz.supabase.co/auth/v1",
    "trailing-slash": ISS + "/",
    "http-scheme": ISS.replace("https://", "http://"),
    "legacy-api-key-issuer": "supabase",
    "missing": REMOVE,
}


@pytest.mark.parametrize("iss", WRONG_ISSUERS.values(), ids=WRONG_ISSUERS)
async def test_c10_tokens_from_other_issuers_are_refused(
    server: Running, keys: Keys, iss: object
) -> None:
    refusal = await server.refusal(es256(keys.ec1, supabase_claims(iss=iss)))

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "BAD_ISSUER")


async def test_c10_hs256_token_of_another_stack_sharing_the_secret_is_refused(
    server: Running,
) -> None:
    other = "https://zzzzzzzzzzzzzzzzzzzz.supabase.co/auth/v1"

    refusal = await server.refusal(hs256(payload=supabase_claims(iss=other)))

    assert refusal.reason == "BAD_ISSUER"


async def test_c10_attacker_key_and_urls_in_the_token_are_never_fetched(
    server: Running, keys: Keys
) -> None:
    attacker = await JwksStub().start()
    attacker.serve_keys(keys.ec_evil)
    evil_claims = supabase_claims(iss=attacker.base_url + "/auth/v1")
    try:
        tokens = [
            es256(keys.ec_evil, evil_claims, kid="k"),
            es256(keys.ec_evil, evil_claims, jku=attacker.url),
            es256(keys.ec_evil, evil_claims, x5u=attacker.url),
            es256(keys.ec_evil, supabase_claims(), jwk=keys.ec_evil.jwk()),
        ]

        refusals = [await server.refusal(token) for token in tokens]
    finally:
        await attacker.close()

    assert {r.code for r in refusals} == {UNAUTHENTICATED}
    assert attacker.hits == 0


# C11: non-user credentials presented as a user token.


def _legacy_api_key(role: str) -> str:
    now = _now()
    payload = {"iss": "supabase", "ref": REF, "role": role, "iat": now}
    payload["exp"] = now + 315360000
    return hs256(payload=payload)


@pytest.mark.parametrize("role", ["anon", "service_role"])
async def test_c11_legacy_api_keys_are_not_user_tokens(
    server: Running, role: str
) -> None:
    refusal = await server.refusal(_legacy_api_key(role))

    assert refusal.code == UNAUTHENTICATED
    assert refusal.reason in {"BAD_ISSUER", "BAD_AUDIENCE", "INVALID_CLAIM"}


OPAQUE_KEYS = {
    "secret-key": "sb_secret_0123456789abcdef0123456789abcdef",
    "publishable-key": "sb_publishable_0123456789abcdef0123456789",
    "bearer-prefix": "Bearer sb_secret_0123456789abcdef",
    "bearer-nothing": "Bearer ",
}


@pytest.mark.parametrize("token", OPAQUE_KEYS.values(), ids=OPAQUE_KEYS)
async def test_c11_opaque_api_keys_are_malformed_and_never_echoed(
    server: Running, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "MALFORMED")
    assert "sb_" not in refusal.message
    assert "sb_secret_" not in caplog.text


async def test_c11_anonymous_user_is_refused_only_where_permanent_users_are_required(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(is_anonymous=True))

    response = await server.verify(token)
    refusal = await server.refusal(token, reject_anonymous=True)

    assert response.sub == UID_A
    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED


# C25 (token size): limits are checked before decoding, deterministically.


async def test_c25_token_of_about_12_kib_is_accepted(
    server: Running, keys: Keys
) -> None:
    claims = supabase_claims(app_metadata={"blob": "x" * 10 * 1024})
    token = es256(keys.ec1, claims)

    response = await server.verify(token)

    assert 12 * 1024 < len(token) < 16 * 1024
    assert response.app_metadata["blob"] == "x" * 10 * 1024


async def test_c25_token_of_about_20_kib_is_refused_before_decoding(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(app_metadata={"blob": "x" * 15 * 1024}))

    refusal = await server.refusal(token)

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOKEN_TOO_LARGE",
    )
    assert refusal.metadata["max_bytes"] == str(16 * 1024)


async def test_c25_five_mib_token_is_refused_and_the_server_stays_healthy(
    server: Running, keys: Keys
) -> None:
    huge = "a" * (5 * 1024 * 1024)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.verify(huge)
    after = await server.verify(es256(keys.ec1))

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after.sub == UID_A


async def test_c25_token_exactly_at_the_limit_is_decoded_and_one_past_is_not(
    server: Running,
) -> None:
    at_limit = "a" * (16 * 1024 - 8) + ".bbb.ccc"
    past_limit = "a" * (16 * 1024 - 7) + ".bbb.ccc"

    at = await server.refusal(at_limit)
    past = await server.refusal(past_limit)

    assert at.reason != "TOKEN_TOO_LARGE"
    assert past.reason == "TOKEN_TOO_LARGE"


async def test_deeply_nested_claims_are_malformed_not_internal(
    server: Running, keys: Keys
) -> None:
    nested: object = "leaf"
    for _ in range(40):
        nested = {"n": nested}

    refusal = await server.refusal(es256(keys.ec1, supabase_claims(deep=nested)))

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "MALFORMED")


async def test_alg_none_in_every_casing_is_refused(server: Running) -> None:
    variants = ["none", "None", "NONE", "nOnE"]
    unsigned = [jws({"alg": alg}, supabase_claims(), None) for alg in variants]
    tokens = unsigned + [token + "AA" for token in unsigned]

    refusals = [await server.refusal(token) for token in tokens]

    assert {r.reason for r in refusals} == {"ALGORITHM_NOT_ALLOWED"}


async def test_crit_header_is_refused(server: Running, keys: Keys) -> None:
    refusal = await server.refusal(es256(keys.ec1, crit=["exp"]))

    assert (refusal.reason, refusal.metadata["header"]) == (
        "HEADER_NOT_ALLOWED",
        "crit",
    )


async def test_token_signed_for_one_key_id_cannot_borrow_another(
    server: Running, keys: Keys
) -> None:
    """An EC token naming the RSA key's kid is refused by the key's type."""
    refusal = await server.refusal(es256(keys.ec1, kid="rsa-1"))

    assert refusal.reason == "ALGORITHM_NOT_ALLOWED"
