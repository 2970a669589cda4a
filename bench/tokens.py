"""The bench's signing keys, its JWKS endpoint, and the tokens each cell sends.

Tokens are signed with `cryptography` directly by the test helpers in
tests/support/tokens.py (never by authsvc), shaped like Supabase access
tokens, and served as a JWKS by tests/support/jwks_stub.py on loopback, so
authsvc and the Node baseline fetch the very same keys over HTTP.
"""

from __future__ import annotations

import multiprocessing
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support import tokens as signer
from tests.support.jwks_stub import JwksStub

ALGORITHMS = ("ES256", "RS256", "HS256")
ISSUER = signer.ISS
HS256_SECRET = signer.HS_SECRET
SIGNING_CHUNK = 2000


@dataclass
class Keys:
    ec: signer.EcKey
    rsa: signer.RsaKey

    @classmethod
    def generate(cls) -> Keys:
        return cls(
            signer.EcKey.generate("bench-ec-1"), signer.RsaKey.generate("bench-rsa-1")
        )

    async def serve(self) -> JwksStub:
        stub = await JwksStub().start()
        stub.serve_keys(self.ec, self.rsa)
        return stub


# Set before the signing pool forks, so workers inherit the keys (key objects
# cannot be pickled).
_signing_keys: Keys | None = None


def _sign(job: tuple[str, list[str]]) -> list[str]:
    algorithm, subjects = job
    assert _signing_keys is not None  # noqa: S101 (set before the fork)
    tokens = []
    for subject in subjects:
        claims = signer.supabase_claims(sub=subject, email=f"{subject[:8]}@example.com")
        if algorithm == "ES256":
            tokens.append(signer.es256(_signing_keys.ec, claims))
        elif algorithm == "RS256":
            tokens.append(signer.rs256(_signing_keys.rsa, claims))
        else:
            tokens.append(signer.hs256(HS256_SECRET, claims))
    return tokens


def sign(keys: Keys, algorithm: str, subjects: list[str]) -> list[str]:
    """One token per subject (each with its own session id), on every core."""
    global _signing_keys
    _signing_keys = keys
    jobs = [
        (algorithm, subjects[i : i + SIGNING_CHUNK])
        for i in range(0, len(subjects), SIGNING_CHUNK)
    ]
    if len(jobs) == 1:
        return _sign(jobs[0])
    with multiprocessing.get_context("fork").Pool() as pool:
        return [token for chunk in pool.map(_sign, jobs) for token in chunk]


def new_subjects(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def write_bodies(path: Path, messages: Iterable[bytes]) -> Path:
    with path.open("wb") as file:
        for message in messages:
            file.write(grpc_frame(message))
    return path


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    with path.open("w") as file:
        for line in lines:
            file.write(line + "\n")
    return path
