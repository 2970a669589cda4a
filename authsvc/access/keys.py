"""Caller keys: how they are made, stored and recognised.

A key is 32 random bytes, base64url-encoded behind a recognisable prefix so
secret scanners and people can tell what it is. The server stores only its
SHA-256: keys are high-entropy, so a fast hash is enough and a slow password
hash would cost every call.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "asvc_"
KEY_RANDOM_BYTES = 32
HASH_PREFIX = "sha256:"
MAX_KEY_CHARS = 256

HASH_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def hash_key(key: str) -> str:
    """The stored form of a key: `sha256:` and 64 hex digits."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def digest(stored: str) -> bytes:
    """The raw digest of a stored hash (validated by the caller config)."""
    return bytes.fromhex(stored.removeprefix(HASH_PREFIX))


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()
