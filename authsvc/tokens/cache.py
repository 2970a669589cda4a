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

The cache is bounded twice: by entries, and by an estimate of their memory
(token text plus decoded claims and the response built from them, which grow
with the number of JSON values, not with the token's length: a 16 KiB token
of empty objects holds hundreds of KiB). An entry estimated above a 64th of
the budget is not kept at all, so one token cannot flush the rest.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from authsvc.tokens.verifier import VerifiedToken


# Bytes per cached entry: per character of token text, and per JSON value of
# its claims (a dict or list entry, a Struct value in the response). Measured
# with tracemalloc and RSS on typical and adversarial tokens, rounded up.
BYTES_PER_TOKEN_CHAR = 2
BYTES_PER_JSON_VALUE = 200
LARGEST_SHARE = 64


@dataclass(frozen=True, slots=True)
class CachedToken:
    verified: VerifiedToken
    # The key object that verified it (None for HS256, whose secret is fixed).
    key: Any
    # The last moment (epoch seconds) the token is still accepted.
    valid_until: float
    # Estimated memory, in bytes.
    cost: int


def estimated_cost(token: str, json_values: int) -> int:
    return BYTES_PER_TOKEN_CHAR * len(token) + BYTES_PER_JSON_VALUE * json_values


class VerifiedTokenCache:
    """A bounded LRU of verified tokens; `max_entries` 0 switches it off."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
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
            self._remove(digest)
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry

    def drop(self, digest: bytes) -> None:
        """Forget an entry whose key has gone; the lookup counts as a miss."""
        if self._remove(digest):
            self.hits -= 1
            self.misses += 1

    def put(self, digest: bytes, entry: CachedToken) -> None:
        """Keep an entry, evicting the least recently used past either bound;
        one estimated above a 64th of the byte budget is not kept."""
        if not self.max_entries or entry.cost > self.max_bytes // LARGEST_SHARE:
            return
        self._remove(digest)
        self._entries[digest] = entry
        self.bytes += entry.cost
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.cost

    def _remove(self, digest: bytes) -> bool:
        entry = self._entries.pop(digest, None)
        if entry is None:
            return False
        self.bytes -= entry.cost
        return True
