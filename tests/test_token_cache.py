"""The verified-token cache and the VerifyTokens batch RPC.

The cache must never accept what a fresh verification would refuse: an
expired token, or one whose key has left the JWKS. The expiry tests drive the
verifier with a fake clock (an HS256 secret, so no JWKS is involved); the rest
go through a real server and a real JWKS over loopback HTTP.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from authsvc.errors import TokenRejected
from authsvc.tokens import TokenVerifier
from authsvc.v1 import auth_pb2
from tests.conftest import Keys, Refusal, Running, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import HS_SECRET, ISS, es256, hs256, supabase_claims
from tests.test_ops import _samples, _value

NOW = 1_900_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _verifier(
    clock: FakeClock, entries: int = 10, cache_bytes: int = 64 * 1024 * 1024
) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISS,
        audiences=("authenticated",),
        leeway_seconds=5,
        max_token_bytes=16384,
        keys=None,
        hs256_secret=HS_SECRET,
        cache_entries=entries,
        cache_bytes=cache_bytes,
        clock=clock,
    )


def _token(exp: float, sub: str = "user-1", **claims: object) -> str:
    payload = supabase_claims(iat=int(NOW) - 10, exp=int(exp), sub=sub, **claims)
    return hs256(HS_SECRET, payload)


async def test_a_cached_token_is_refused_once_its_own_exp_and_leeway_pass() -> None:
    clock = FakeClock()
    verifier = _verifier(clock)
    token = _token(exp=NOW + 60)

    first = await verifier.verify(token)
    clock.now = NOW + 60 + 5  # the last accepted moment
    again = await verifier.verify(token)
    clock.now = NOW + 60 + 6
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(token)

    assert again is first  # served from the cache
    assert (verifier.cache.hits, verifier.cache.misses) == (1, 2)
    assert caught.value.reason.value == "TOKEN_EXPIRED"
    assert len(verifier.cache) == 0


async def test_the_cache_is_bounded_and_keeps_the_recently_used() -> None:
    clock = FakeClock()
    verifier = _verifier(clock, entries=2)
    a, b, c = (_token(NOW + 600, sub=name) for name in "abc")

    await verifier.verify(a)
    await verifier.verify(b)
    await verifier.verify(a)  # a is now the most recent
    await verifier.verify(c)  # evicts b
    hits_before = verifier.cache.hits
    await verifier.verify(a)
    await verifier.verify(b)

    assert len(verifier.cache) == 2
    assert verifier.cache.hits == hits_before + 1  # a hit, b missed


async def test_the_cache_is_bounded_by_estimated_memory_not_only_entries() -> None:
    """Claims of many small JSON values cost far more memory than their
    token's length suggests; such a token is not kept, and the estimate of
    everything kept stays under the budget."""
    budget = 64 * 10_000  # so no single entry may exceed 10,000 bytes
    verifier = _verifier(FakeClock(), entries=10_000, cache_bytes=budget)
    dense = _token(NOW + 600, sub="dense", user_metadata={"m": [{}] * 100})

    await verifier.verify(dense)
    for i in range(300):
        await verifier.verify(_token(NOW + 600, sub=f"user-{i}"))

    assert verifier.cache.hits == 0
    await verifier.verify(dense)
    assert verifier.cache.hits == 0  # never kept
    assert 0 < verifier.cache.bytes <= budget
    assert 50 < len(verifier.cache) < 300  # the budget, not the entry cap, bound it


async def test_a_cache_of_zero_entries_keeps_nothing() -> None:
    verifier = _verifier(FakeClock(), entries=0)
    token = _token(NOW + 600)

    await verifier.verify(token)
    await verifier.verify(token)

    assert len(verifier.cache) == 0
    assert (verifier.cache.hits, verifier.cache.misses) == (0, 0)


async def test_a_cached_anonymous_token_is_still_refused_where_anonymous_is_not(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(is_anonymous=True))

    await server.verify(token)
    refusal = await server.refusal(token, reject_anonymous=True)

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ANONYMOUS_NOT_ALLOWED",
    )


async def test_a_repeated_token_is_a_hit_with_the_same_claims_in_metrics(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1, supabase_claims(org_id="org-7"))

    first = await server.verify(token)
    second = await server.verify(token)
    samples = await _samples(server)

    assert first == second
    assert second.org_id == "org-7"
    lookups = "authsvc_token_cache_lookups_total"
    assert _value(samples, lookups, result="hit") == 1
    assert _value(samples, lookups, result="miss") == 1
    assert _value(samples, "authsvc_token_cache_entries") == 1


@pytest.mark.parametrize("change", ["removed", "replaced under the same kid"])
async def test_a_key_leaving_the_jwks_ends_the_tokens_it_verified(
    start_server: StartServer, jwks: JwksStub, keys: Keys, change: str
) -> None:
    running = await start_server(jwks)
    token = es256(keys.ec1)
    await running.verify(token)
    assert running.server.keys is not None

    if change == "removed":
        jwks.serve_keys(keys.ec2, keys.rsa1)
    else:
        impostor = type(keys.ec1).generate(keys.ec1.kid)
        jwks.serve_keys(impostor, keys.rsa1)
    await running.server.keys.refresh()
    refusal = await running.refusal(token)

    expected = "UNKNOWN_KEY" if change == "removed" else "BAD_SIGNATURE"
    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        expected,
    )


# VerifyTokens


async def test_a_batch_answers_each_token_in_order_as_verify_token_would(
    server: Running, keys: Keys
) -> None:
    tokens = [
        es256(keys.ec1, supabase_claims(sub="first")),
        es256(keys.ec1, supabase_claims(exp=1000)),
        "not-a-token",
        "",
        hs256(HS_SECRET, supabase_claims(sub="last")),
    ]

    response = await server.auth.VerifyTokens(
        auth_pb2.VerifyTokensRequest(tokens=tokens), timeout=10
    )
    singles = []
    for token in tokens:
        try:
            singles.append(("ok", (await server.verify(token)).sub))
        except grpc.aio.AioRpcError as error:
            refusal = Refusal.of(error)
            singles.append((refusal.code.value[0], refusal.reason))

    batch = [
        ("ok", result.claims.sub)
        if result.WhichOneof("result") == "claims"
        else (result.error.code, result.error.reason)
        for result in response.results
    ]
    assert batch == singles
    assert batch[0] == ("ok", "first")
    assert batch[1] == (grpc.StatusCode.UNAUTHENTICATED.value[0], "TOKEN_EXPIRED")
    assert batch[4] == ("ok", "last")
    assert "expired_at" in response.results[1].error.metadata
    assert tokens[2] not in response.results[2].error.message


async def test_batch_claims_are_whole_whether_built_or_taken_from_the_cache(
    server: Running, keys: Keys
) -> None:
    token = es256(
        keys.ec1,
        supabase_claims(org_id="org-7", user_role="owner", user_metadata={"n": [1]}),
    )

    def batch() -> Any:
        return server.auth.VerifyTokens(
            auth_pb2.VerifyTokensRequest(tokens=[token]), timeout=10
        )

    built = (await batch()).results[0].claims  # verified now, the message built
    single = await server.verify(token)  # the cached bytes
    cached = (await batch()).results[0].claims  # parsed from the cached bytes

    assert built == single == cached
    assert (built.org_id, built.user_role, built.email) == (
        "org-7",
        "owner",
        "a@example.com",
    )
    assert built.claims["user_metadata"]["n"] == [1]
    assert built.user_metadata["n"] == [1]
    assert built.app_metadata["provider"] == "email"
    assert built.expires_at.seconds > built.issued_at.seconds > 0


async def test_a_batch_at_the_limit_passes_and_one_more_is_refused_whole(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    running = await start_server(jwks, AUTHSVC_MAX_BATCH_TOKENS="3")
    token = es256(keys.ec1)

    at_limit = await running.auth.VerifyTokens(
        auth_pb2.VerifyTokensRequest(tokens=[token] * 3), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.auth.VerifyTokens(
            auth_pb2.VerifyTokensRequest(tokens=[token] * 4), timeout=10
        )

    assert [r.WhichOneof("result") for r in at_limit.results] == ["claims"] * 3
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "AUTHSVC_MAX_BATCH_TOKENS" in (caught.value.details() or "")


async def test_an_empty_batch_gives_an_empty_result(server: Running) -> None:
    response = await server.auth.VerifyTokens(
        auth_pb2.VerifyTokensRequest(), timeout=10
    )

    assert list(response.results) == []


async def test_a_batch_whose_results_would_exceed_the_message_limit_is_refused(
    server: Running, keys: Keys
) -> None:
    """300 tokens of 11 KB fit in a request (3.3 MB) but their claims, twice
    over (typed fields and `claims`), would not fit in a 4 MiB response."""
    big = es256(keys.ec1, supabase_claims(user_metadata={"bio": "x" * 8000}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.VerifyTokens(
            auth_pb2.VerifyTokensRequest(tokens=[big] * 300), timeout=30
        )
    refusal = Refusal.of(caught.value)

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "LIMIT_EXCEEDED",
    )
    assert refusal.metadata["limit"] == "response_bytes"
