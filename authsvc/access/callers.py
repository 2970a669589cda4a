"""The named callers an operator configures, and recognising them on a call.

Callers are written in TOML, in `AUTHSVC_CALLERS` or in the file named by
`AUTHSVC_CALLERS_FILE`:

    [callers.billing]
    key_hashes = ["sha256:…"]          # from `authsvc caller-key`
    scopes = ["tokens:verify", "data:read", "data:write"]

    [callers.reports]
    key_hashes = ["sha256:…", "sha256:…"]   # old and new during a rotation
    scopes = ["data:admin"]
    admin_tables = ["public.invoices"]      # admin narrowed to these
    max_concurrent = 8
    requests_per_second = 50

Nothing here imports grpc; `CallerSet.parse` raises `CallerConfigError` with a
message that names the caller and the field.
"""

from __future__ import annotations

import hmac
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from authsvc.access.keys import HASH_PATTERN, KEY_PREFIX, digest, key_digest
from authsvc.access.scopes import Scope, qualified
from authsvc.errors import PermissionDenied, Reason

MAX_CALLER_NAME_CHARS = 64
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
# One request an hour; below that a limiter's wait is not a useful number.
MIN_REQUESTS_PER_SECOND = 1 / 3600
_KEY_TEXT = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]+")


class CallerConfigError(Exception):
    """The caller configuration cannot be used; the message says where."""


class _CallerModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key_hashes: tuple[str, ...] = ()
    tls_names: tuple[str, ...] = ()
    scopes: tuple[Scope, ...] = Field(min_length=1)
    admin_tables: tuple[str, ...] | None = None
    admin_functions: tuple[str, ...] | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    requests_per_second: float | None = Field(default=None, ge=0)

    @field_validator("requests_per_second")
    @classmethod
    def _check_rate(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_REQUESTS_PER_SECOND:
            raise ValueError(
                f"must be 0 (no limit) or at least {MIN_REQUESTS_PER_SECOND}"
            )
        return value

    @field_validator("key_hashes")
    @classmethod
    def _check_hashes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item.startswith(KEY_PREFIX):
                raise ValueError(
                    "holds a key, not its hash: store the sha256:… line that "
                    "`authsvc caller-key` prints, and give the key to the app"
                )
            if not HASH_PATTERN.fullmatch(item):
                raise ValueError("each entry must be sha256: and 64 lowercase hex")
        return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    callers: dict[str, _CallerModel] = Field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    """One app, as identified by its key or its client certificate."""

    name: str
    scopes: frozenset[Scope]
    # None: every table (or function); a set: only these (schema, name) pairs.
    admin_tables: frozenset[tuple[str, str]] | None = None
    admin_functions: frozenset[tuple[str, str]] | None = None
    max_concurrent: int | None = None
    requests_per_second: float | None = None

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(
                Reason.SCOPE_MISSING,
                f"caller {self.name!r} lacks the scope {scope.value}; "
                "the operator grants it in the caller configuration",
                {"scope": scope.value, "caller": self.name},
            )

    def require_admin_table(self, schema: str, table: str) -> None:
        self.require(Scope.DATA_ADMIN)
        allowed = self.admin_tables
        if allowed is not None and (schema, table) not in allowed:
            which = "other tables" if allowed else "no table"
            raise PermissionDenied(
                Reason.SCOPE_MISSING,
                f"caller {self.name!r} has data:admin for {which}, "
                f"not {schema}.{table}",
                {"scope": Scope.DATA_ADMIN.value, "caller": self.name},
            )

    def require_admin_function(self, schema: str, function: str) -> None:
        self.require(Scope.DATA_ADMIN)
        allowed = self.admin_functions
        if allowed is not None and (schema, function) not in allowed:
            which = "other functions" if allowed else "no function"
            raise PermissionDenied(
                Reason.SCOPE_MISSING,
                f"caller {self.name!r} has data:admin for {which}, "
                f"not {schema}.{function}",
                {"scope": Scope.DATA_ADMIN.value, "caller": self.name},
            )


# Every call is this caller when the operator allows unauthenticated calls.
UNAUTHENTICATED_CALLER = Caller(
    name="unauthenticated",
    scopes=frozenset({Scope.TOKENS_VERIFY, Scope.DATA_READ, Scope.DATA_WRITE}),
)


class CallerSet:
    """The configured callers, looked up by key digest or certificate name."""

    def __init__(
        self, callers: Sequence[tuple[Caller, Sequence[bytes], Sequence[str]]]
    ):
        self.callers = tuple(caller for caller, _, _ in callers)
        self._digests = [(d, caller) for caller, digests, _ in callers for d in digests]
        self._tls_names = {
            name: caller for caller, _, names in callers for name in names
        }

    def __len__(self) -> int:
        return len(self.callers)

    @classmethod
    def parse(cls, text: str) -> CallerSet:
        try:
            return cls._parse(text)
        except CallerConfigError as exc:
            # A key pasted in the wrong place must not reach a log line.
            raise CallerConfigError(_KEY_TEXT.sub("asvc_…", str(exc))) from None

    @classmethod
    def _parse(cls, text: str) -> CallerSet:
        try:
            document = tomllib.loads(text)
        except RecursionError:
            raise CallerConfigError("not valid TOML: nested too deeply") from None
        except tomllib.TOMLDecodeError as exc:
            hint = ""
            if text.strip().startswith(("/", "./")):
                hint = " (it looks like a path: set AUTHSVC_CALLERS_FILE to it instead)"
            raise CallerConfigError(f"not valid TOML{hint}: {exc}") from None
        try:
            model = _FileModel.model_validate(document)
        except ValidationError as exc:
            raise CallerConfigError(_describe(exc)) from None

        entries = []
        seen_hashes: dict[str, str] = {}
        seen_names: dict[str, str] = {}
        for name, item in model.callers.items():
            _check_name(name)
            if not item.key_hashes and not item.tls_names:
                raise CallerConfigError(
                    f"caller {name!r} has neither key_hashes nor tls_names: "
                    "nothing could identify it"
                )
            for stored in item.key_hashes:
                if stored in seen_hashes:
                    raise CallerConfigError(
                        f"callers {seen_hashes[stored]!r} and {name!r} share a key hash"
                    )
                seen_hashes[stored] = name
            for tls_name in item.tls_names:
                if tls_name in seen_names:
                    raise CallerConfigError(
                        f"callers {seen_names[tls_name]!r} and {name!r} share "
                        f"the TLS name {tls_name!r}"
                    )
                seen_names[tls_name] = name
            narrowed = item.admin_tables is not None or item.admin_functions is not None
            caller = Caller(
                name=name,
                scopes=frozenset(item.scopes),
                admin_tables=_pairs(item.admin_tables, narrowed),
                admin_functions=_pairs(item.admin_functions, narrowed),
                max_concurrent=item.max_concurrent,
                requests_per_second=item.requests_per_second,
            )
            entries.append(
                (caller, [digest(h) for h in item.key_hashes], list(item.tls_names))
            )
        return cls(entries)

    def by_key(self, key: str) -> Caller | None:
        """The caller holding `key`; every stored digest is compared in
        constant time, so timing says nothing about which one matched."""
        presented = key_digest(key)
        found = None
        for stored, caller in self._digests:
            if hmac.compare_digest(stored, presented):
                found = caller
        return found

    def by_tls_name(self, names: Sequence[str]) -> Caller | None:
        for name in names:
            caller = self._tls_names.get(name)
            if caller is not None:
                return caller
        return None


def _pairs(
    names: tuple[str, ...] | None, narrowed: bool
) -> frozenset[tuple[str, str]] | None:
    if names is None:
        return frozenset() if narrowed else None
    return frozenset(qualified(name) for name in names)


def _check_name(name: str) -> None:
    if name == UNAUTHENTICATED_CALLER.name:
        raise CallerConfigError(
            f"caller name {name!r} is reserved for calls without a key "
            "(AUTHSVC_ALLOW_UNAUTHENTICATED); choose another"
        )
    if not name or len(name) > MAX_CALLER_NAME_CHARS or not set(name) <= NAME_CHARS:
        raise CallerConfigError(
            f"caller name {name[:MAX_CALLER_NAME_CHARS]!r} must be 1-64 of a-z, 0-9, "
            "'-', '_' and '.' (it appears in logs and metrics)"
        )


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
