"""A local stand-in for Supabase Auth: a signing key, its JWKS, and tokens.

For `authsvc dev` and `authsvc token` only. The key is an ES256 (P-256) key
kept in a directory between runs, so tokens minted earlier keep verifying.
The JWKS is served over HTTP on loopback at the same path Supabase uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from authsvc.config import JWKS_PATH

DEV_ISSUER = "http://authsvc-dev.localhost/auth/v1"
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600
DEV_USER_ID = "11111111-1111-1111-1111-111111111111"
DEV_EMAIL = "dev@example.com"
KEY_FILE = "es256-private-key.pem"


class DevIssuer:
    """Signs Supabase-shaped access tokens with a key kept on disk."""

    def __init__(self, directory: Path) -> None:
        """Load the key from `directory`, or create it there."""
        self.directory = directory
        self.key_file = directory / KEY_FILE
        self.created = False
        self._private_key = self._load_or_create()
        self.public_jwk = self._public_jwk()
        self.kid = str(self.public_jwk["kid"])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def mint(
        self,
        *,
        sub: str = DEV_USER_ID,
        email: str | None = DEV_EMAIL,
        role: str = "authenticated",
        expires_in: int = DEFAULT_TOKEN_LIFETIME_SECONDS,
        is_anonymous: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """An access token shaped like Supabase's, with `extra` merged in."""
        now = int(time.time())
        # An already-expired token was still issued before it expired.
        issued = (
            now if expires_in > 0 else now + expires_in - DEFAULT_TOKEN_LIFETIME_SECONDS
        )
        provider = "anonymous" if is_anonymous else "email"
        claims: dict[str, Any] = {
            "iss": DEV_ISSUER,
            "aud": "authenticated",
            "sub": sub,
            "exp": now + expires_in,
            "iat": issued,
            "email": "" if is_anonymous else (email or ""),
            "phone": "",
            "role": role,
            "aal": "aal1",
            "amr": [
                {
                    "method": "anonymous" if is_anonymous else "password",
                    "timestamp": issued,
                }
            ],
            "session_id": str(uuid.uuid4()),
            "is_anonymous": is_anonymous,
            "app_metadata": {"provider": provider, "providers": [provider]},
            "user_metadata": {},
        }
        claims.update(extra or {})
        return jwt.encode(
            claims,
            self._private_key,
            algorithm="ES256",
            headers={"kid": self.kid, "typ": "JWT"},
        )

    def _load_or_create(self) -> ec.EllipticCurvePrivateKey:
        if self.key_file.exists():
            key = serialization.load_pem_private_key(
                self.key_file.read_bytes(), password=None
            )
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.key_file} does not hold an EC private key")
            return key

        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        self.created = True
        return key

    def _public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(ECAlgorithm.to_jwk(self._private_key.public_key()))
        # RFC 7638 thumbprint: stable for the key, so it makes a good kid.
        members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
        digest = hashlib.sha256(canonical.encode()).digest()
        kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return {**members, "kid": kid, "alg": "ES256", "use": "sig"}


async def serve_jwks(
    issuer: DevIssuer, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve the issuer's JWKS on loopback; return the runner and the JWKS URL."""

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get(JWKS_PATH, jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}{JWKS_PATH}"
