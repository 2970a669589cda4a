"""The gate every call but health passes: network, caller identity, limits.

`Gate.admit` is a context manager around one call. In order it checks the
peer against the allowlist, identifies the caller (bearer key, else client
certificate name), and counts the call against that caller's concurrency and
rate limits; leaving the block releases the slot. The caller set can be
swapped while calls run (`replace`), which is how a reload takes effect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from authsvc.access.callers import UNAUTHENTICATED_CALLER, Caller, CallerSet
from authsvc.access.keys import HASH_PREFIX, MAX_KEY_CHARS, hash_key
from authsvc.access.limits import CallerLimiter
from authsvc.access.network import Network, allowed
from authsvc.errors import PermissionDenied, Reason, Unauthenticated

logger = logging.getLogger(__name__)

BEARER = "bearer"
# "sha256:" and 8 hex digits of an unknown key's hash, for the log.
HINT_CHARS = len(HASH_PREFIX) + 8
JWT_START = "eyJ"


class Gate:
    def __init__(
        self,
        callers: CallerSet,
        *,
        allow_unauthenticated: bool,
        networks: Sequence[Network],
        default_max_concurrent: int,
        default_rate: float,
    ) -> None:
        self._allow_unauthenticated = allow_unauthenticated
        self._networks = tuple(networks)
        self._default_max_concurrent = default_max_concurrent
        self._default_rate = default_rate
        self._limiters: dict[str, CallerLimiter] = {}
        self.callers = callers
        self.replace(callers)

    def replace(self, callers: CallerSet) -> None:
        """Use a new caller set from the next call on; a caller keeps its
        in-flight count (and its limiter) across the swap."""
        limiters = {}
        for caller in (*callers.callers, UNAUTHENTICATED_CALLER):
            wanted = self._limits_of(caller)
            limiter = self._limiters.get(caller.name)
            if limiter is None:
                limiter = CallerLimiter(caller.name, *wanted)
            elif (limiter.max_concurrent, limiter.rate) != wanted:
                # The same object: calls in flight release what they took.
                limiter.reconfigure(*wanted)
            limiters[caller.name] = limiter
        self._limiters = limiters
        self.callers = callers

    def acquire(self, caller: Caller) -> CallerLimiter:
        """Step two: take one of the caller's concurrency slots and one unit
        of its rate (or raise ResourceExhausted); `release()` the returned
        limiter when the call ends."""
        limiter = self._limiters.get(caller.name) or CallerLimiter(
            caller.name, *self._limits_of(caller)
        )
        limiter.acquire()
        return limiter

    @contextmanager
    def admit(
        self, *, authorization: Sequence[str], peer: str, tls_names: Sequence[str]
    ) -> Iterator[Caller]:
        """Both steps at once, for callers that need not tell them apart."""
        caller = self.recognise(
            authorization=authorization, peer=peer, tls_names=tls_names
        )
        limiter = self.acquire(caller)
        try:
            yield caller
        finally:
            limiter.release()

    def recognise(
        self, *, authorization: Sequence[str], peer: str, tls_names: Sequence[str]
    ) -> Caller:
        """Step one: the network allowlist, then who is calling. Separate from
        `acquire` so a call refused by a limit is still logged under its caller."""
        if self._networks and not allowed(peer, self._networks):
            raise PermissionDenied(
                Reason.NETWORK_NOT_ALLOWED,
                "calls from this address are not allowed "
                "(the operator sets AUTHSVC_ALLOWED_NETWORKS)",
            )
        return self.identify(authorization, tls_names)

    def identify(
        self, authorization: Sequence[str], tls_names: Sequence[str]
    ) -> Caller:
        """Who is calling; raise Unauthenticated with a reason the app can act on."""
        if len(authorization) > 1:
            raise Unauthenticated(
                Reason.CALLER_KEY_INVALID,
                "send one authorization header, not several",
            )
        if authorization:
            key = _bearer_key(authorization[0])
            caller = self.callers.by_key(key)
            if caller is None:
                # A short fingerprint tells an operator which app still sends
                # a revoked key; it reveals nothing usable about the key.
                logger.info(
                    "unknown caller key fingerprint=%s", hash_key(key)[:HINT_CHARS]
                )
                raise Unauthenticated(
                    Reason.CALLER_KEY_INVALID,
                    "the caller key is not known to this server (revoked, "
                    "mistyped, or meant for another deployment)",
                )
            return caller
        if tls_names:
            caller = self.callers.by_tls_name(tls_names)
            if caller is not None:
                return caller
        if self._allow_unauthenticated:
            return UNAUTHENTICATED_CALLER
        raise Unauthenticated(
            Reason.CALLER_KEY_MISSING,
            "this call needs the calling app's key: send the metadata "
            "'authorization: Bearer <key>' (an end user's token goes in the "
            "request message, not here)",
        )

    def _limits_of(self, caller: Caller) -> tuple[int, float]:
        max_concurrent = caller.max_concurrent or self._default_max_concurrent
        rate = caller.requests_per_second
        return max_concurrent, self._default_rate if rate is None else rate


def _bearer_key(value: str) -> str:
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != BEARER or not key:
        raise Unauthenticated(
            Reason.CALLER_KEY_INVALID,
            "the authorization metadata must be 'Bearer <key>'",
        )
    if key.startswith(HASH_PREFIX):
        raise Unauthenticated(
            Reason.CALLER_KEY_INVALID,
            "the authorization metadata holds a key's sha256: hash; send the key "
            "itself (asvc_…), and keep the hash in authsvc's caller configuration",
        )
    if key.startswith(JWT_START):
        raise Unauthenticated(
            Reason.CALLER_KEY_INVALID,
            "the authorization metadata holds a JWT; it must hold the calling "
            "app's key (`authsvc caller-key`). Send an end user's token in the "
            "request message",
        )
    if len(key) > MAX_KEY_CHARS:
        raise Unauthenticated(
            Reason.CALLER_KEY_INVALID,
            f"the caller key is longer than {MAX_KEY_CHARS} characters",
        )
    return key
