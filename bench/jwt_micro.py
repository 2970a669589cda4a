"""Single-core decode rates of pyjwt's entry points and of `cryptography` alone.

Runs with any interpreter that has pyjwt and cryptography (not authsvc), so the
same script can compare pyjwt versions installed side by side:

    /tmp/jwt213/bin/python bench/jwt_micro.py
    .venv/bin/python bench/jwt_micro.py --authsvc

Every row verifies the same distinct ES256/RS256/HS256 tokens in a loop and
prints operations per second on one core. `--profile NAME` runs cProfile on one
row instead and prints its top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import hmac
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import tokens as signer

TOKENS_PER_ALGORITHM = 500
SECONDS_PER_ROW = 1.0


def _rate(operation: Callable[[Any], object], items: list[Any]) -> float:
    """Operations per second of `operation` over `items`, for about a second."""
    for item in items[:50]:
        operation(item)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS_PER_ROW:
        for item in items:
            operation(item)
        done += len(items)
    return done / (time.perf_counter() - start)


def _split(token: str) -> tuple[bytes, bytes]:
    head, payload, signature = token.split(".")
    return f"{head}.{payload}".encode(), base64url_decode(signature)


def build_rows(
    with_authsvc: bool,
) -> dict[str, tuple[Callable[[Any], object], list[Any]]]:
    ec_key = signer.EcKey.generate("ec-1")
    rsa_key = signer.RsaKey.generate("rsa-1")
    secret = signer.HS_SECRET
    es = [signer.es256(ec_key) for _ in range(TOKENS_PER_ALGORITHM)]
    rs = [signer.rs256(rsa_key) for _ in range(TOKENS_PER_ALGORITHM)]
    hs = [
        signer.hs256(payload=signer.supabase_claims(sub=f"user-{n}"))
        for n in range(TOKENS_PER_ALGORITHM)
    ]
    ec_public = ec_key.private.public_key()
    rsa_public = rsa_key.private.public_key()
    ec_jwk = jwt.PyJWK(ec_key.jwk())
    rsa_jwk = jwt.PyJWK(rsa_key.jwk())
    hs_jwk = jwt.PyJWK(
        {"kty": "oct", "k": signer.b64url(secret.encode()), "alg": "HS256"}
    )
    options = {"audience": "authenticated", "issuer": signer.ISS}

    def decode(key: Any, algorithm: str) -> Callable[[str], object]:
        return lambda token: jwt.decode(token, key, algorithms=[algorithm], **options)

    es_parts = [_split(t) for t in es]
    rs_parts = [_split(t) for t in rs]
    hs_parts = [_split(t) for t in hs]
    es_der = [
        (msg, encode_dss_signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        ))
        for msg, sig in es_parts
    ]  # fmt: skip
    ecdsa = ec.ECDSA(hashes.SHA256())
    es_alg = ECAlgorithm(ECAlgorithm.SHA256)
    rs_alg = RSAAlgorithm(RSAAlgorithm.SHA256)
    hs_alg = HMACAlgorithm(HMACAlgorithm.SHA256)
    hs_prepared = hs_alg.prepare_key(secret)
    secret_bytes = secret.encode()

    rows: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "cryptography ES256 verify (DER sig, prebuilt ECDSA)": (
            lambda p: ec_public.verify(p[1], p[0], ecdsa),
            es_der,
        ),
        "cryptography RS256 verify": (
            lambda p: rsa_public.verify(
                p[1], p[0], padding.PKCS1v15(), hashes.SHA256()
            ),
            rs_parts,
        ),
        "hmac HS256 compare": (
            lambda p: hmac.compare_digest(
                p[1], hmac.new(secret_bytes, p[0], hashlib.sha256).digest()
            ),
            hs_parts,
        ),
        "pyjwt ES256 Algorithm.verify (key object)": (
            lambda p: es_alg.verify(p[0], ec_public, p[1]),
            es_parts,
        ),
        "pyjwt RS256 Algorithm.verify (key object)": (
            lambda p: rs_alg.verify(p[0], rsa_public, p[1]),
            rs_parts,
        ),
        "pyjwt HS256 Algorithm.verify (prepared key)": (
            lambda p: hs_alg.verify(p[0], hs_prepared, p[1]),
            hs_parts,
        ),
        "jwt.decode ES256 (key object)": (decode(ec_public, "ES256"), es),
        "jwt.decode RS256 (key object)": (decode(rsa_public, "RS256"), rs),
        "jwt.decode HS256 (str secret)": (decode(secret, "HS256"), hs),
        "jwt.decode ES256 (PyJWK)": (decode(ec_jwk, "ES256"), es),
        "jwt.decode RS256 (PyJWK)": (decode(rsa_jwk, "RS256"), rs),
        "jwt.decode HS256 (PyJWK)": (decode(hs_jwk, "HS256"), hs),
        "HMACAlgorithm.prepare_key (str secret)": (hs_alg.prepare_key, [secret] * 50),
        "jwt.api_jws._load (header+payload+sig decode)": (
            jwt.api_jws._jws_global_obj._load,
            es,
        ),
    }
    if with_authsvc:
        rows.update(_authsvc_rows(ec_key, rsa_key, secret, es, rs, hs))
    return rows


def _authsvc_rows(
    ec_key: Any, rsa_key: Any, secret: str, es: list[str], rs: list[str], hs: list[str]
) -> dict[str, tuple[Callable[[Any], object], list[Any]]]:
    """authsvc's own verifier, keys loaded from a JWKS document (no HTTP)."""
    from authsvc.tokens.keys import parse_jwks
    from authsvc.tokens.verifier import TokenVerifier

    class _StaticKeys:
        loaded = True

        def __init__(self, keys: dict[str, Any]) -> None:
            self._keys = keys
            self.key_count = len(keys)

        async def get(self, kid: str) -> Any:
            return self._keys[kid]

    keys = parse_jwks({"keys": [ec_key.jwk(), rsa_key.jwk()]})
    verifier = TokenVerifier(
        issuer=signer.ISS,
        audiences=("authenticated",),
        leeway_seconds=30,
        max_token_bytes=16384,
        keys=_StaticKeys(keys),  # type: ignore[arg-type]
        hs256_secret=secret,
    )

    def run(token: str) -> object:
        # The coroutine never suspends with static keys: drive it by hand.
        coroutine = verifier.verify(token)
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("verify suspended")

    return {
        "authsvc TokenVerifier ES256": (run, es),
        "authsvc TokenVerifier RS256": (run, rs),
        "authsvc TokenVerifier HS256": (run, hs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authsvc", action="store_true", help="add authsvc's verifier")
    parser.add_argument("--profile", metavar="ROW", help="cProfile one row (substring)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    rows = build_rows(args.authsvc)
    if args.profile:
        name = next(n for n in rows if args.profile in n)
        operation, items = rows[name]
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(4):
            for item in items:
                operation(item)
        profile.disable()
        print(f"# {name}, pyjwt {jwt.__version__}, {4 * len(items)} calls")
        pstats.Stats(profile).sort_stats("tottime").print_stats(14)
        return

    results = {name: _rate(op, items) for name, (op, items) in rows.items()}
    if args.json:
        print(json.dumps({"pyjwt": jwt.__version__, "ops_per_second": results}))
        return
    print(f"pyjwt {jwt.__version__}, one core, ops/s")
    for name, rate in results.items():
        print(f"  {name:<50} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
