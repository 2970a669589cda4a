"""The verification policy for Supabase Auth access tokens.

The algorithm is decided by the key, never by the token alone: ES256 and RS256
tokens are checked with the JWKS key their `kid` names (and must match its
type), HS256 tokens with the legacy secret. Header fields that point at other
keys (`jku`, `x5u`, `jwk`, `x5c`) and `crit` are refused outright.

pyjwt supplies the signature primitives; the parsing and claim rules are ours,
so every refusal carries a precise reason.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from authsvc.errors import (
    AnonymousNotAllowed,
    AuthsvcError,
    Reason,
    TokenMissing,
    TokenRejected,
    TokenTooLarge,
)
from authsvc.tokens.cache import CachedToken, VerifiedTokenCache, estimated_cost
from authsvc.tokens.keys import KeySet, printable

logger = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = frozenset({"ES256", "RS256", "HS256"})
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
REQUIRED_STRING_CLAIMS = ("sub",)
OPTIONAL_STRING_CLAIMS = ("email", "phone", "role", "aal", "session_id")
OPTIONAL_OBJECT_CLAIMS = ("app_metadata", "user_metadata")
MAX_CLAIM_DEPTH = 32
# The last second of year 9999: the largest time a protobuf Timestamp holds.
MAX_TIMESTAMP = 253_402_300_799
MAX_JSON_INTEGER = 2**63
MAX_ALG_CHARS_SHOWN = 32
BEARER_PREFIX = "bearer "
# Parsed token headers kept at once (a project has a handful of keys; the
# set is emptied when full, so headers made up by a caller cannot grow it).
MAX_REMEMBERED_HEADERS = 64

# The signature may be empty so that an unsecured token (`alg: none`) gets
# ALGORITHM_NOT_ALLOWED rather than a vaguer MALFORMED.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SIGNERS = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "HS256": HMACAlgorithm(HMACAlgorithm.SHA256),
}


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check, with its claims."""

    claims: dict[str, Any]
    algorithm: str
    key_id: str | None
    # Renderings of this token built once and reused while it is cached (the
    # API keeps its response message here); never part of equality.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sub(self) -> str:
        return str(self.claims["sub"])

    @property
    def issuer(self) -> str:
        return str(self.claims["iss"])

    @property
    def audience(self) -> tuple[str, ...]:
        aud = self.claims["aud"]
        return (aud,) if isinstance(aud, str) else tuple(aud)

    @property
    def issued_at(self) -> int:
        return int(self.claims["iat"])

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    @property
    def is_anonymous(self) -> bool:
        return self.claims.get("is_anonymous") is True

    def string_claim(self, name: str) -> str:
        """The claim if it is a string, else the empty string."""
        value = self.claims.get(name)
        return value if isinstance(value, str) else ""

    def object_claim(self, name: str) -> dict[str, Any]:
        """The claim if it is a JSON object, else an empty one."""
        value = self.claims.get(name)
        return value if isinstance(value, dict) else {}


class TokenVerifier:
    """Checks access tokens against one project's keys, issuer and audiences."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: tuple[str, ...],
        leeway_seconds: float,
        max_token_bytes: int,
        keys: KeySet | None,
        hs256_secret: str | None,
        cache_entries: int = 0,
        cache_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.leeway = leeway_seconds
        self.max_token_bytes = max_token_bytes
        self.keys = keys
        self._hs256_key = (
            _SIGNERS["HS256"].prepare_key(hs256_secret) if hs256_secret else None
        )
        self._clock = clock
        self.cache = VerifiedTokenCache(cache_entries, cache_bytes)
        self._warned_missing: set[str] = set()
        # Every token signed with one key has the same header text: parsed
        # headers by that text (read only; nothing is decided here).
        self._headers: dict[str, dict[str, Any]] = {}
        # Told each outcome: None when accepted, else the reason (for metrics).
        self.on_result: Callable[[str | None], None] | None = None

    @property
    def ready(self) -> bool:
        """True when some token could be verified right now."""
        if self._hs256_key is not None:
            return True
        return self.keys is not None and self.keys.loaded and self.keys.key_count > 0

    async def verify(
        self, token: str, *, reject_anonymous: bool = False
    ) -> VerifiedToken:
        """Verify `token`; raise a `TokenRejected` (or another AuthsvcError)."""
        try:
            verified = await self._verify(token, reject_anonymous=reject_anonymous)
        except AuthsvcError as exc:
            if self.on_result is not None:
                self.on_result(exc.reason.value)
            raise
        if self.on_result is not None:
            self.on_result(None)
        return verified

    async def _verify(self, token: str, *, reject_anonymous: bool) -> VerifiedToken:
        if not token:
            raise TokenMissing()
        if len(token) > self.max_token_bytes or (
            not token.isascii() and len(token.encode()) > self.max_token_bytes
        ):
            raise TokenTooLarge(self.max_token_bytes)
        digest = None
        if self.cache.max_entries:
            digest = self.cache.digest(token)
            cached = self._cached(digest)
            if cached is not None:
                if reject_anonymous and cached.is_anonymous:
                    raise AnonymousNotAllowed()
                return cached
        if not _COMPACT_JWS.fullmatch(token):
            if token[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
                raise _malformed("pass the token without the 'Bearer ' prefix")
            raise _malformed(
                "token is not a compact JWS (three base64url parts, no padding)"
            )

        encoded_header, encoded_payload, encoded_signature = token.split(".")
        header = self._headers.get(encoded_header)
        if header is None:
            header, _ = _decode_json_object(encoded_header, "header")
            if len(self._headers) >= MAX_REMEMBERED_HEADERS:
                self._headers.clear()
            self._headers[encoded_header] = header
        algorithm, kid, key = await self._select_key(header)

        signing_input = token[: len(encoded_header) + 1 + len(encoded_payload)]
        signature = _decode_segment(encoded_signature, "signature")
        if base64url_encode(signature).decode() != encoded_signature:
            # Unused trailing bits set: the same signature under another spelling.
            raise _malformed("token signature is not canonical base64url")
        if not _SIGNERS[algorithm].verify(signing_input.encode(), key, signature):
            raise TokenRejected(
                Reason.BAD_SIGNATURE, "signature does not verify with the key"
            )

        claims, json_values = _decode_json_object(encoded_payload, "payload")
        self._check_claims(claims)
        verified = VerifiedToken(claims=claims, algorithm=algorithm, key_id=kid)
        if digest is not None:
            valid_until = float(claims["exp"]) + self.leeway
            cost = estimated_cost(token, json_values)
            cached_key = key if kid is not None else None
            self.cache.put(digest, CachedToken(verified, cached_key, valid_until, cost))
        if reject_anonymous and verified.is_anonymous:
            raise AnonymousNotAllowed()
        return verified

    def _cached(self, digest: bytes) -> VerifiedToken | None:
        entry = self.cache.get(digest, self._clock())
        if entry is None:
            return None
        kid = entry.verified.key_id
        if kid is not None:
            current = self.keys.current(kid) if self.keys is not None else None
            if current is None or current.key is not entry.key:
                # The key left the JWKS (or changed): verify afresh.
                self.cache.drop(digest)
                return None
        return entry.verified

    async def _select_key(self, header: dict[str, Any]) -> tuple[str, str | None, Any]:
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise TokenRejected(
                    Reason.HEADER_NOT_ALLOWED,
                    f"header field '{name}' is not accepted; keys come only from the "
                    "project's JWKS",
                    {"header": name},
                )

        algorithm = header.get("alg")
        if algorithm is None:
            raise TokenRejected(
                Reason.ALGORITHM_NOT_ALLOWED, "token header has no 'alg'", {"alg": ""}
            )
        if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
            shown = printable(json.dumps(algorithm), MAX_ALG_CHARS_SHOWN)
            raise TokenRejected(
                Reason.ALGORITHM_NOT_ALLOWED,
                f"algorithm {shown} is not allowed; ES256, RS256 and HS256 are",
                {"alg": shown},
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed("header field 'kid' is not a string")

        if algorithm == "HS256":
            if self._hs256_key is None:
                raise self._not_configured(algorithm, "SUPABASE_JWT_SECRET is not set")
            return algorithm, None, self._hs256_key

        if self.keys is None:
            raise self._not_configured(algorithm, "the JWKS is switched off")
        if not kid:
            raise TokenRejected(
                Reason.UNKNOWN_KEY, f"{algorithm} token has no (or an empty) 'kid'"
            )
        key = await self.keys.get(kid)
        if key.algorithm != algorithm:
            raise TokenRejected(
                Reason.ALGORITHM_NOT_ALLOWED,
                f"token says {algorithm} but key '{printable(key.kid)}' is an "
                f"{key.algorithm} key",
                {"alg": algorithm},
            )
        return algorithm, kid, key.key

    def _not_configured(self, algorithm: str, why: str) -> TokenRejected:
        if algorithm not in self._warned_missing:
            self._warned_missing.add(algorithm)
            logger.warning(
                "token refused: no verifier configured alg=%s why=%s", algorithm, why
            )
        return TokenRejected(
            Reason.ALGORITHM_NOT_ALLOWED,
            f"no verifier is configured for {algorithm} ({why})",
            {"alg": algorithm},
        )

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()

        exp = _timestamp_claim(claims, "exp", required=True)
        if exp is not None and now > exp + self.leeway:
            raise TokenRejected(
                Reason.TOKEN_EXPIRED,
                "token has expired",
                {"expired_at": _rfc3339(exp)},
            )
        for name, required in (("nbf", False), ("iat", True)):
            value = _timestamp_claim(claims, name, required=required)
            if value is not None and value > now + self.leeway:
                raise TokenRejected(
                    Reason.TOKEN_NOT_YET_VALID,
                    f"token is not valid yet ('{name}' is in the future)",
                    {"claim": name},
                )

        if claims.get("iss") != self.issuer:
            raise TokenRejected(
                Reason.BAD_ISSUER,
                f"token was not issued by {self.issuer}",
            )
        if not self._audience_accepted(claims.get("aud")):
            raise TokenRejected(
                Reason.BAD_AUDIENCE,
                "token audience is not one of: " + ", ".join(sorted(self.audiences)),
            )

        for name in REQUIRED_STRING_CLAIMS:
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise _invalid_claim(name, "must be a non-empty string")
        for name in OPTIONAL_STRING_CLAIMS:
            if claims.get(name) is not None and not isinstance(claims[name], str):
                raise _invalid_claim(name, "must be a string")
        for name in (*REQUIRED_STRING_CLAIMS, *OPTIONAL_STRING_CLAIMS):
            # No identity contains NUL, and Postgres settings cannot hold it.
            if "\x00" in claims.get(name, ""):
                raise _invalid_claim(name, "must not contain a NUL character")
        for name in OPTIONAL_OBJECT_CLAIMS:
            if claims.get(name) is not None and not isinstance(claims[name], dict):
                raise _invalid_claim(name, "must be a JSON object")
        if claims.get("is_anonymous") is not None and not isinstance(
            claims["is_anonymous"], bool
        ):
            raise _invalid_claim("is_anonymous", "must be true or false")

    def _audience_accepted(self, aud: Any) -> bool:
        if isinstance(aud, str):
            return aud in self.audiences
        if isinstance(aud, list) and all(isinstance(item, str) for item in aud):
            return any(item in self.audiences for item in aud)
        return False


def _timestamp_claim(
    claims: dict[str, Any], name: str, *, required: bool
) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _invalid_claim(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_claim(name, "must be a number of seconds since the epoch")
    if not 0 <= value <= MAX_TIMESTAMP:
        raise _invalid_claim(name, "is outside the years 1970-9999")
    return float(value)


def _invalid_claim(name: str, problem: str) -> TokenRejected:
    return TokenRejected(
        Reason.INVALID_CLAIM, f"claim '{name}' {problem}", {"claim": name}
    )


def _malformed(message: str) -> TokenRejected:
    return TokenRejected(Reason.MALFORMED, message)


def _decode_segment(segment: str, part: str) -> bytes:
    try:
        return base64url_decode(segment)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"token {part} is not valid base64url") from exc


def _decode_json_object(segment: str, part: str) -> tuple[dict[str, Any], int]:
    """The JSON object, and an upper estimate of how many values it holds
    (every value but a container's first follows a comma; containers are
    counted by their brackets)."""
    raw = _decode_segment(segment, part)
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"token {part} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise _malformed(f"token {part} is not a JSON object")
    containers = text.count("{") + text.count("[")
    # Lone surrogates can only come from \u escapes, and nesting deeper than
    # the limit needs more brackets than the limit: without either, the walk
    # cannot find a problem and is skipped (typical tokens have ~5 brackets).
    check_strings = "\\u" in text
    if check_strings or containers > MAX_CLAIM_DEPTH:
        problem = _structure_problem(value, check_strings=check_strings)
        if problem is not None:
            raise _malformed(f"token {part} {problem}")
    return value, text.count(",") + containers + 1


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError("integer too large")
    value = int(text)
    if abs(value) > MAX_JSON_INTEGER:
        raise ValueError("integer too large")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _structure_problem(value: Any, *, check_strings: bool) -> str | None:
    """What makes a decoded JSON value unusable, if anything (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            if check_strings and not all(map(_is_unicode, node)):
                return "has a string that is not valid Unicode"
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            if check_strings and isinstance(node, str) and not _is_unicode(node):
                return "has a string that is not valid Unicode"
            continue
        if level > MAX_CLAIM_DEPTH:
            return f"is nested deeper than {MAX_CLAIM_DEPTH} levels"
        stack.extend((child, level + 1) for child in children)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
