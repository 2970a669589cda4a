"""Hand-made JWTs for tests: signed with `cryptography` directly, not by authsvc.

Keeping the minting independent of the code under test means a bug in our
verifier cannot be hidden by the same bug in our signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REF = "abcdefghijklmnopqrst"
SUPABASE_URL = f"https://{REF}.supabase.co"
ISS = f"{SUPABASE_URL}/auth/v1"
UID_A = "11111111-1111-1111-1111-111111111111"
UID_B = "22222222-2222-2222-2222-222222222222"
HS_SECRET = "s3cr3t-legacy-jwt-secret-0123456789abcdef"  # 40 characters

REMOVE = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def int_b64url(value: int, length: int | None = None) -> str:
    length = length or (value.bit_length() + 7) // 8
    return b64url(value.to_bytes(length, "big"))


@dataclass
class EcKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, kid: str) -> EcKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()))

    def jwk(self, **extra: Any) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": int_b64url(numbers.x, 32),
            "y": int_b64url(numbers.y, 32),
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
        }
        jwk.update(extra)
        return {k: v for k, v in jwk.items() if v is not REMOVE}

    def sign_raw(self, signing_input: bytes) -> bytes:
        """JOSE form: R and S, 32 bytes each."""
        der = self.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign_der(self, signing_input: bytes) -> bytes:
        return self.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))


@dataclass
class RsaKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str, bits: int = 2048) -> RsaKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    def jwk(self, **extra: Any) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "n": int_b64url(numbers.n),
            "e": int_b64url(numbers.e),
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
        }
        jwk.update(extra)
        return {k: v for k, v in jwk.items() if v is not REMOVE}

    def sign_raw(self, signing_input: bytes) -> bytes:
        return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def supabase_claims(**overrides: Any) -> dict[str, Any]:
    """A payload shaped like a Supabase access token (P0), with overrides.

    Pass `REMOVE` as a value to drop a claim.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": "authenticated",
        "sub": UID_A,
        "exp": now + 3600,
        "iat": now,
        "email": "a@example.com",
        "phone": "",
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"name": "Ada"},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not REMOVE}


def jws(header: dict[str, Any], payload: Any, signer: Any) -> str:
    """Compact JWS; `signer` is an EcKey, RsaKey, bytes (HMAC secret) or None."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}".encode()
    if signer is None:
        signature = b""
    elif isinstance(signer, bytes | str):
        secret = signer.encode() if isinstance(signer, str) else signer
        signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    else:
        signature = signer.sign_raw(signing_input)
    return f"{signing_input.decode()}.{b64url(signature)}"


def es256(key: EcKey, payload: Any | None = None, **header: Any) -> str:
    head = {"alg": "ES256", "kid": key.kid, "typ": "JWT", **header}
    head = {k: v for k, v in head.items() if v is not REMOVE}
    return jws(head, supabase_claims() if payload is None else payload, key)


def rs256(key: RsaKey, payload: Any | None = None, **header: Any) -> str:
    head = {"alg": "RS256", "kid": key.kid, "typ": "JWT", **header}
    head = {k: v for k, v in head.items() if v is not REMOVE}
    return jws(head, supabase_claims() if payload is None else payload, key)


def hs256(secret: str = HS_SECRET, payload: Any | None = None, **header: Any) -> str:
    head = {"alg": "HS256", "typ": "JWT", **header}
    head = {k: v for k, v in head.items() if v is not REMOVE}
    return jws(head, supabase_claims() if payload is None else payload, secret)
