"""The project's signing keys: fetched from the JWKS URL, cached, refreshed.

Rules this module keeps:

- Keys come only from the configured URL, never from anything in a token.
- The key set is cached for a TTL. An unknown `kid` triggers a refetch, but
  concurrent misses share one fetch and fetch attempts are spaced by a
  cooldown, so random `kid`s cannot make us hammer the endpoint.
- A failed refresh never throws away a good key set: the last good keys keep
  serving (with a warning). A successful refresh replaces the set whole, so a
  key removed from the JWKS stops verifying once the TTL has passed.
- Each JWKS entry is judged alone; an unusable entry (encryption key, other
  curve, private key, short RSA modulus) is skipped, never fatal to the set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from authsvc.errors import KeysUnavailable, Reason, TokenRejected

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
MIN_RSA_KEY_BITS = 2048
MAX_KID_CHARS_SHOWN = 64
# JWK members that only private (or symmetric) keys carry (RFC 7518, 6.2-6.4).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey = EllipticCurvePublicKey | RSAPublicKey

# Everything httpx raises for a request; translated into _FetchFailed.
HTTPX_ERRORS = (
    httpx.HTTPError,
    httpx.StreamError,
    httpx.InvalidURL,
    httpx.CookieConflict,
)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One usable public key from the JWKS; its algorithm is fixed by the key."""

    kid: str
    algorithm: str
    key: PublicKey


class _FetchFailed(Exception):
    """A JWKS fetch did not produce a key set; the message is safe to log."""


def parse_jwks(document: Any) -> dict[str, VerificationKey]:
    """Turn a decoded JWKS document into usable keys by `kid`.

    Raises `_FetchFailed` only when the document as a whole is not a JWKS.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _FetchFailed("the response is not a JWKS document (no 'keys' list)")

    keys: dict[str, VerificationKey] = {}
    for index, entry in enumerate(document["keys"]):
        try:
            key = _parse_key(entry)
        except _UnusableKey as exc:
            logger.info("jwks entry skipped index=%d reason=%s", index, exc)
            continue
        if key.kid in keys:
            logger.warning("jwks entry skipped index=%d reason=duplicate kid", index)
            continue
        keys[key.kid] = key
    return keys


class _UnusableKey(Exception):
    pass


def _parse_key(entry: Any) -> VerificationKey:
    if not isinstance(entry, dict):
        raise _UnusableKey("not a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _UnusableKey("no kid (tokens name their key by kid)")
    if entry.get("use", "sig") != "sig":
        raise _UnusableKey("use is not 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (
        not isinstance(key_ops, list) or "verify" not in key_ops
    ):
        raise _UnusableKey("key_ops does not include 'verify'")
    if PRIVATE_MEMBERS & entry.keys():
        raise _UnusableKey("entry holds private key material")

    kty = entry.get("kty")
    if kty == "EC" and entry.get("crv") == "P-256":
        algorithm = "ES256"
    elif kty == "RSA":
        algorithm = "RS256"
    else:
        raise _UnusableKey(f"unsupported key type {kty!r}/{entry.get('crv')!r}")
    if entry.get("alg", algorithm) != algorithm:
        raise _UnusableKey(f"alg {entry.get('alg')!r} does not fit a {kty} key")

    try:
        if algorithm == "ES256":
            key: Any = ECAlgorithm.from_jwk(entry)
        else:
            key = RSAAlgorithm.from_jwk(entry)
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise _UnusableKey(f"invalid key parameters ({type(exc).__name__})") from exc

    if isinstance(key, EllipticCurvePublicKey):
        if not isinstance(key.curve, SECP256R1):
            raise _UnusableKey("EC key is not on P-256")
    elif isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise _UnusableKey(f"RSA key shorter than {MIN_RSA_KEY_BITS} bits")
    else:
        raise _UnusableKey("not a public key")
    return VerificationKey(kid=kid, algorithm=algorithm, key=key)


class KeySet:
    """The cached key set of one JWKS URL.

    `maintain()` (run as a task by the server) keeps the set fresh: it retries
    until the first load succeeds, then refreshes every half TTL, so requests
    never wait for a routine refresh and a removed key is gone within the TTL.
    `get()` refreshes on demand only for an unknown `kid`, or when nothing is
    cached; a stale set is refreshed in the background, never waited on.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        ttl_seconds: float,
        cooldown_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._http = http
        self._ttl = ttl_seconds
        self._cooldown = cooldown_seconds
        self._timeout = timeout_seconds
        self._clock = clock

        self._keys: Mapping[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._finished_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._usable = asyncio.Event()
        # Told the result of every fetch (for metrics).
        self.on_fetch: Callable[[bool], None] | None = None

    @property
    def age_seconds(self) -> float:
        """Seconds since the last successful fetch; NaN before the first."""
        if self._fetched_at is None:
            return math.nan
        return self._clock() - self._fetched_at

    @property
    def loaded(self) -> bool:
        """True once one fetch has succeeded (the set may still be empty)."""
        return self._fetched_at is not None

    @property
    def key_count(self) -> int:
        return len(self._keys)

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def current(self, kid: str) -> VerificationKey | None:
        """The key held under `kid` right now; never fetches."""
        return self._keys.get(kid)

    async def wait_usable(self) -> None:
        """Return once a fetch has produced at least one usable key."""
        await self._usable.wait()

    async def get(self, kid: str) -> VerificationKey:
        """Return the key for `kid`, refreshing the set when the rules allow."""
        if self._fetched_at is None:
            if self._may_fetch():
                await self._shared_fetch()
            if self._fetched_at is None:
                raise KeysUnavailable(
                    self._last_error or "the JWKS was not fetched yet"
                )
        elif self._is_stale() and self._inflight is None and self._may_fetch():
            # Serve the cached keys now; a hung JWKS must not stall every call.
            self._start_fetch()

        key = self._keys.get(kid)
        if key is None and self._may_fetch():
            # A rotated-in key: look again, unless we looked a moment ago.
            await self._shared_fetch()
            key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(
                Reason.UNKNOWN_KEY,
                "no usable key with this kid in the project's JWKS",
                {"kid": printable(kid)},
            )
        return key

    async def refresh(self) -> None:
        """Fetch now (sharing a fetch already running); raise if nothing is cached."""
        await self._shared_fetch()
        if self._fetched_at is None:
            raise KeysUnavailable(self._last_error or "no key set fetched yet")

    async def maintain(
        self, *, retry_min_seconds: float, retry_max_seconds: float
    ) -> None:
        """Keep the set fresh until cancelled; failures are logged, never raised."""
        retry = retry_min_seconds
        while True:
            if self._fetched_at is None:
                await self._shared_fetch()
                if self._fetched_at is None:
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, retry_max_seconds)
                continue
            retry = retry_min_seconds

            due = self._fetched_at + self._ttl / 2 - self._clock()
            if due > 0:
                await asyncio.sleep(due)
                continue
            fetched_at = self._fetched_at
            await self._shared_fetch()
            if self._fetched_at == fetched_at:
                await asyncio.sleep(max(self._cooldown, retry_min_seconds))

    def _is_stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _may_fetch(self) -> bool:
        """A fetch is running (join it), or the last one ended a cooldown ago."""
        if self._inflight is not None or self._finished_at is None:
            return True
        return self._clock() - self._finished_at >= self._cooldown

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch_and_store())
        return self._inflight

    async def _shared_fetch(self) -> None:
        # Shielded: a caller that gives up (deadline) must not cancel the
        # fetch other callers are waiting on.
        await asyncio.shield(self._start_fetch())

    async def _fetch_and_store(self) -> None:
        try:
            keys = await self._fetch()
        except _FetchFailed as exc:
            if self.on_fetch is not None:
                self.on_fetch(False)
            self._last_error = str(exc)
            if self._fetched_at is not None:
                logger.warning(
                    "jwks refresh failed; serving cached keys url=%s error=%s "
                    "cached_keys=%d",
                    self.url,
                    exc,
                    len(self._keys),
                )
            else:
                logger.warning("jwks fetch failed url=%s error=%s", self.url, exc)
            return
        finally:
            # The cooldown counts from the end of a fetch, so a slow endpoint
            # is not asked again the moment it answers.
            self._finished_at = self._clock()
            self._inflight = None

        if self.on_fetch is not None:
            self.on_fetch(True)
        added = keys.keys() - self._keys.keys()
        removed = self._keys.keys() - keys.keys()
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_error = None
        if keys:
            self._usable.set()
        else:
            self._usable.clear()
        if added or removed or not keys:
            logger.info(
                "jwks loaded url=%s keys=%d added=%s removed=%s",
                self.url,
                len(keys),
                ",".join(sorted(added)) or "-",
                ",".join(sorted(removed)) or "-",
            )

    async def _fetch(self) -> dict[str, VerificationKey]:
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._download()
        except TimeoutError as exc:
            raise _FetchFailed(f"timed out after {self._timeout:g}s") from exc
        except HTTPX_ERRORS as exc:
            raise _FetchFailed(f"{type(exc).__name__}: {exc}") from exc

        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _FetchFailed("the response is not JSON") from exc
        return parse_jwks(document)

    async def _download(self) -> bytes:
        async with self._http.stream(
            "GET", self.url, headers={"accept": "application/json"}
        ) as response:
            if response.status_code != httpx.codes.OK:
                raise _FetchFailed(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _FetchFailed(f"the response is over {MAX_JWKS_BYTES} bytes")
            return bytes(body)


def printable(value: str, limit: int = MAX_KID_CHARS_SHOWN) -> str:
    """A token-supplied string made safe to show: printable, short, valid UTF-8."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in value[: limit + 1])
    if len(shown) > limit:
        return shown[:limit] + "…"
    return shown
