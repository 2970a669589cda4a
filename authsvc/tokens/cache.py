"""Tokens that already passed verification, kept until their own expiry.

An app sends the same access token with every request of a session, so most
verifications repeat one already done. The cache maps the SHA-256 of the exact
token text to its `VerifiedToken`; a hit costs a hash and a dictionary lookup
instead of a signature check and two JSON parses.

An entry is used only while all of this holds, else it is dropped and the
token verified afresh (which gives the precise refusal):
- the token has not expired (its `exp` plus the same leeway a fresh check
  allows);
- the key that verified it is still the one the key set holds under its
  `kid` (a key removed from the JWKS, or replaced under the same `kid`, ends
  every entry it verified).
Only accepted tokens are kept: a refusal is cheap to repeat, and caching one
would let a token that is refused now for a passing reason stay refused.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authsvc.tokens.verifier import VerifiedToken


@dataclass(frozen=True, slots=True)
class CachedToken:
    verified: VerifiedToken
    # The key object that verified it (None for HS256, whose secret is fixed).
    key: Any
    # The last moment (epoch seconds) the token is still accepted.
    valid_until: float


class VerifiedTokenCache:
    """A bounded LRU of verified tokens; `max_entries` 0 switches it off."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes, now: float) -> CachedToken | None:
        """The entry if it is still valid at `now`; the caller checks the key."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        if now > entry.valid_until:
            del self._entries[digest]
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry

    def drop(self, digest: bytes) -> None:
        """Forget an entry whose key has gone; the lookup counts as a miss."""
        if self._entries.pop(digest, None) is not None:
            self.hits -= 1
            self.misses += 1

    def put(self, digest: bytes, entry: CachedToken) -> None:
        if not self.max_entries:
            return
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
