"""Settings, read once from the environment and validated at start-up.

Names follow what users already have: Supabase's own (`SUPABASE_URL`,
`SUPABASE_JWT_SECRET`) where one exists, `AUTHSVC_*` for ours. A bad value
fails start-up with a `ConfigError` that names the variable; secrets are
never echoed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from authsvc.access.network import parse_networks

DEFAULT_LISTEN_ADDR = "[::]:50051"
# Metrics, /healthz and /readyz; `off` switches the port off.
DEFAULT_METRICS_ADDR = "[::]:9091"
METRICS_OFF = "off"
DEFAULT_AUDIENCES = ("authenticated",)
DEFAULT_LEEWAY_SECONDS = 30.0
MAX_LEEWAY_SECONDS = 300.0
DEFAULT_JWKS_TTL_SECONDS = 600.0
DEFAULT_JWKS_COOLDOWN_SECONDS = 10.0
DEFAULT_JWKS_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_TOKEN_BYTES = 16 * 1024
# Verified tokens kept (about 2 KiB each for a typical Supabase token).
DEFAULT_TOKEN_CACHE_ENTRIES = 10_000
DEFAULT_TOKEN_CACHE_MB = 64
DEFAULT_MAX_BATCH_TOKENS = 1000
DEFAULT_SHUTDOWN_GRACE_SECONDS = 8.0
MIN_JWT_SECRET_CHARS = 32
DEFAULT_DB_SCHEMAS = ("public",)
DEFAULT_DB_USER_ROLES = ("authenticated",)
DEFAULT_DB_POOL_MAX = 7
DEFAULT_DB_ACQUIRE_TIMEOUT_SECONDS = 5.0
DEFAULT_DB_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_DB_MAX_IDLE_SECONDS = 300.0
DEFAULT_DB_MAX_ROWS = 1000
DEFAULT_DB_STATEMENT_TIMEOUT_SECONDS = 10.0
DEFAULT_DB_MAX_STATEMENT_TIMEOUT_SECONDS = 60.0
# Postgres' statement_timeout is an int of milliseconds.
MAX_STATEMENT_TIMEOUT_SECONDS = (2**31 - 1) / 1000
DEFAULT_DB_MAX_CONDITIONS = 100
DEFAULT_DB_MAX_FILTER_DEPTH = 8
DEFAULT_DB_MAX_IN_LIST = 1000
DEFAULT_DB_MAX_INSERT_ROWS = 1000
DEFAULT_DB_MAX_AFFECTED = 10_000
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_METADATA_BYTES = 16 * 1024
DEFAULT_CALLER_MAX_CONCURRENT = 64
DEFAULT_CALLER_REQUESTS_PER_SECOND = 1000.0
# Roles a token may never select, whatever the allowlist says.
FORBIDDEN_USER_ROLES = frozenset({"service_role", "postgres", "supabase_admin"})

JWKS_OFF = "off"
ISSUER_PATH = "/auth/v1"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"

_SECRET_VARIABLES = frozenset(
    {"SUPABASE_JWT_SECRET", "DATABASE_URL", "AUTHSVC_CALLERS"}
)
OUR_PREFIX = "AUTHSVC_"
# Variables read by other parts of the command, not by Settings.
OTHER_KNOWN_VARIABLES = frozenset(
    {"AUTHSVC_DEV_DIR", "AUTHSVC_CALLER_KEY", "AUTHSVC_WORKER_PARENT"}
)
# Hosts reached over a private or local network, where plain http is acceptable:
# loopback, and Fly's private names (6PN is encrypted by WireGuard).
_PRIVATE_HOST_SUFFIXES = (".localhost", ".internal", ".flycast")
MAX_PORT = 65535


class ConfigError(Exception):
    """The configuration cannot work; the message names the variable."""


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _check_fetch_url(value: str) -> str:
    """An http(s) URL with a host; plain http only for local or private hosts."""
    parts = urlsplit(value)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError("must be an https:// URL with a host")
    if parts.scheme == "http" and not _is_private_host(parts.hostname):
        raise ValueError(
            "must use https:// (plain http is accepted only for localhost and "
            "Fly private names such as *.internal)"
        )
    return value


def _is_private_host(host: str) -> bool:
    if host == "localhost" or host.endswith(_PRIVATE_HOST_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _check_listen_addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > MAX_PORT:
        raise ValueError(
            "must be HOST:PORT with a port from 0 to 65535, e.g. [::]:50051"
        )
    return value


class Settings(BaseModel):
    """Everything the service needs to start, with defaults that work on Fly."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    supabase_url: str | None = Field(default=None, alias="SUPABASE_URL")
    jwt_secret: SecretStr | None = Field(default=None, alias="SUPABASE_JWT_SECRET")
    listen_addr: str = Field(default=DEFAULT_LISTEN_ADDR, alias="AUTHSVC_LISTEN_ADDR")
    # 0: one per CPU this process may run on. `authsvc serve --workers N`
    # overrides it.
    workers: int = Field(default=0, ge=0, le=256, alias="AUTHSVC_WORKERS")
    # Set by the supervisor for the processes it starts (not for operators):
    # the worker's number and the pipe it reports its ports on.
    worker_index: int | None = Field(default=None, ge=0, alias="AUTHSVC_WORKER_INDEX")
    worker_report_fd: int | None = Field(
        default=None, ge=0, alias="AUTHSVC_WORKER_REPORT_FD"
    )
    metrics_addr: str = Field(
        default=DEFAULT_METRICS_ADDR, alias="AUTHSVC_METRICS_ADDR"
    )
    issuer_override: str | None = Field(default=None, alias="AUTHSVC_ISSUER")
    jwks_url_override: str | None = Field(default=None, alias="AUTHSVC_JWKS_URL")
    audiences: tuple[str, ...] = Field(
        default=DEFAULT_AUDIENCES, alias="AUTHSVC_AUDIENCES"
    )
    leeway_seconds: float = Field(
        default=DEFAULT_LEEWAY_SECONDS,
        ge=0,
        le=MAX_LEEWAY_SECONDS,
        alias="AUTHSVC_LEEWAY_SECONDS",
    )
    jwks_ttl_seconds: float = Field(
        default=DEFAULT_JWKS_TTL_SECONDS, gt=0, alias="AUTHSVC_JWKS_TTL_SECONDS"
    )
    jwks_cooldown_seconds: float = Field(
        default=DEFAULT_JWKS_COOLDOWN_SECONDS,
        ge=0,
        alias="AUTHSVC_JWKS_COOLDOWN_SECONDS",
    )
    jwks_timeout_seconds: float = Field(
        default=DEFAULT_JWKS_TIMEOUT_SECONDS,
        gt=0,
        le=60,
        alias="AUTHSVC_JWKS_TIMEOUT_SECONDS",
    )
    max_token_bytes: int = Field(
        default=DEFAULT_MAX_TOKEN_BYTES,
        ge=1024,
        le=1024 * 1024,
        alias="AUTHSVC_MAX_TOKEN_BYTES",
    )
    max_connection_age_seconds: float = Field(
        default=300, ge=1, le=86400, alias="AUTHSVC_MAX_CONNECTION_AGE_SECONDS"
    )
    token_cache_entries: int = Field(
        default=DEFAULT_TOKEN_CACHE_ENTRIES,
        ge=0,
        le=10_000_000,
        alias="AUTHSVC_TOKEN_CACHE_ENTRIES",
    )
    token_cache_mb: int = Field(
        default=DEFAULT_TOKEN_CACHE_MB, ge=1, le=65536, alias="AUTHSVC_TOKEN_CACHE_MB"
    )
    max_batch_tokens: int = Field(
        default=DEFAULT_MAX_BATCH_TOKENS,
        ge=1,
        le=100_000,
        alias="AUTHSVC_MAX_BATCH_TOKENS",
    )
    shutdown_grace_seconds: float = Field(
        default=DEFAULT_SHUTDOWN_GRACE_SECONDS,
        ge=0,
        le=300,
        alias="AUTHSVC_SHUTDOWN_GRACE_SECONDS",
    )
    log_level: str = Field(default="INFO", alias="AUTHSVC_LOG_LEVEL")
    # One access event per RPC (`all`), or only for calls that failed
    # (`errors`): at thousands of verifications a second, the log of every
    # success is most of the log volume and a fifth of the CPU.
    access_log: Literal["all", "errors"] = Field(
        default="all", alias="AUTHSVC_ACCESS_LOG"
    )
    log_format: str = Field(default="json", alias="AUTHSVC_LOG_FORMAT")

    callers: SecretStr | None = Field(default=None, alias="AUTHSVC_CALLERS")
    callers_file: str | None = Field(default=None, alias="AUTHSVC_CALLERS_FILE")
    allow_unauthenticated: bool = Field(
        default=False, alias="AUTHSVC_ALLOW_UNAUTHENTICATED"
    )
    allowed_networks: tuple[str, ...] = Field(
        default=(), alias="AUTHSVC_ALLOWED_NETWORKS"
    )
    reflection: bool = Field(default=True, alias="AUTHSVC_REFLECTION")
    tls_cert_file: str | None = Field(default=None, alias="AUTHSVC_TLS_CERT_FILE")
    tls_key_file: str | None = Field(default=None, alias="AUTHSVC_TLS_KEY_FILE")
    tls_client_ca_file: str | None = Field(
        default=None, alias="AUTHSVC_TLS_CLIENT_CA_FILE"
    )
    caller_max_concurrent: int = Field(
        default=DEFAULT_CALLER_MAX_CONCURRENT,
        ge=0,
        le=100_000,
        alias="AUTHSVC_CALLER_MAX_CONCURRENT",
    )
    caller_requests_per_second: float = Field(
        default=DEFAULT_CALLER_REQUESTS_PER_SECOND,
        ge=0,
        alias="AUTHSVC_CALLER_REQUESTS_PER_SECOND",
    )

    @field_validator("caller_requests_per_second")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if 0 < value < 1 / 3600:
            raise ValueError("must be 0 (no limit) or at least one an hour")
        return value

    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        alias="AUTHSVC_MAX_REQUEST_BYTES",
    )
    max_metadata_bytes: int = Field(
        default=DEFAULT_MAX_METADATA_BYTES,
        ge=1024,
        le=64 * 1024,
        alias="AUTHSVC_MAX_METADATA_BYTES",
    )

    database_url: SecretStr | None = Field(default=None, alias="DATABASE_URL")
    db_schemas: tuple[str, ...] = Field(
        default=DEFAULT_DB_SCHEMAS, alias="AUTHSVC_DB_SCHEMAS"
    )
    db_user_roles: tuple[str, ...] = Field(
        default=DEFAULT_DB_USER_ROLES, alias="AUTHSVC_DB_USER_ROLES"
    )
    db_allow_admin: bool = Field(default=False, alias="AUTHSVC_DB_ALLOW_ADMIN")
    db_pool_max: int = Field(
        default=DEFAULT_DB_POOL_MAX, ge=1, le=1000, alias="AUTHSVC_DB_POOL_MAX"
    )
    db_acquire_timeout_seconds: float = Field(
        default=DEFAULT_DB_ACQUIRE_TIMEOUT_SECONDS,
        gt=0,
        alias="AUTHSVC_DB_ACQUIRE_TIMEOUT_SECONDS",
    )
    db_connect_timeout_seconds: float = Field(
        default=DEFAULT_DB_CONNECT_TIMEOUT_SECONDS,
        gt=0,
        alias="AUTHSVC_DB_CONNECT_TIMEOUT_SECONDS",
    )
    db_max_idle_seconds: float = Field(
        default=DEFAULT_DB_MAX_IDLE_SECONDS, gt=0, alias="AUTHSVC_DB_MAX_IDLE_SECONDS"
    )
    db_max_rows: int = Field(
        default=DEFAULT_DB_MAX_ROWS, ge=1, le=100_000, alias="AUTHSVC_DB_MAX_ROWS"
    )
    db_max_conditions: int = Field(
        default=DEFAULT_DB_MAX_CONDITIONS,
        ge=1,
        le=10_000,
        alias="AUTHSVC_DB_MAX_CONDITIONS",
    )
    db_max_filter_depth: int = Field(
        default=DEFAULT_DB_MAX_FILTER_DEPTH,
        ge=1,
        le=64,
        alias="AUTHSVC_DB_MAX_FILTER_DEPTH",
    )
    db_max_in_list: int = Field(
        default=DEFAULT_DB_MAX_IN_LIST, ge=1, le=100_000, alias="AUTHSVC_DB_MAX_IN_LIST"
    )
    db_max_insert_rows: int = Field(
        default=DEFAULT_DB_MAX_INSERT_ROWS,
        ge=1,
        le=100_000,
        alias="AUTHSVC_DB_MAX_INSERT_ROWS",
    )
    db_max_affected: int = Field(
        default=DEFAULT_DB_MAX_AFFECTED,
        ge=1,
        le=100_000_000,
        alias="AUTHSVC_DB_MAX_AFFECTED",
    )
    db_statement_timeout_seconds: float = Field(
        default=DEFAULT_DB_STATEMENT_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_STATEMENT_TIMEOUT_SECONDS,
        alias="AUTHSVC_DB_STATEMENT_TIMEOUT_SECONDS",
    )
    db_max_statement_timeout_seconds: float = Field(
        default=DEFAULT_DB_MAX_STATEMENT_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_STATEMENT_TIMEOUT_SECONDS,
        alias="AUTHSVC_DB_MAX_STATEMENT_TIMEOUT_SECONDS",
    )

    @field_validator("db_schemas", "db_user_roles", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        names = _comma_list(value)
        if not names:
            raise ValueError("must name at least one")
        return names

    @field_validator("db_user_roles")
    @classmethod
    def _check_user_roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        forbidden = sorted(FORBIDDEN_USER_ROLES & set(value))
        if forbidden:
            raise ValueError(
                f"must not include {', '.join(forbidden)}: a token naming it would "
                "bypass row-level security"
            )
        return value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value

    @field_validator(
        "callers_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"
    )
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("callers")
    @classmethod
    def _empty_secret_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("audiences", mode="before")
    @classmethod
    def _split_audiences(cls, value: Any) -> Any:
        audiences = _comma_list(value)
        if not audiences:
            raise ValueError("must name at least one audience, e.g. authenticated")
        return audiences

    @field_validator("listen_addr")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _check_listen_addr(value.strip())

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics(cls, value: str) -> str:
        value = value.strip()
        return value if value.lower() == METRICS_OFF else _check_listen_addr(value)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def worker_count(self) -> int:
        """How many server processes `authsvc serve` runs."""
        if self.worker_index is not None:
            return 1  # a worker never starts workers of its own
        return self.workers or len(os.sched_getaffinity(0))

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        """Where the operations port listens, or None when switched off."""
        if self.metrics_addr.lower() == METRICS_OFF:
            return None
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("supabase_url", "issuer_override", "jwks_url_override")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip().rstrip("/")

    @field_validator("supabase_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_fetch_url(value)

    @field_validator("jwks_url_override")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is None or value.lower() == JWKS_OFF:
            return value
        return _check_fetch_url(value)

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < MIN_JWT_SECRET_CHARS:
            raise ValueError(
                f"must be at least {MIN_JWT_SECRET_CHARS} characters "
                "(Supabase's legacy JWT secret is)"
            )
        return value

    @field_validator("log_format")
    @classmethod
    def _check_log_format(cls, value: str) -> str:
        if value.lower() not in ("json", "text"):
            raise ValueError("must be json (one object per line on stdout) or text")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _check_sources(self) -> Settings:
        if self.issuer is None or (
            self.jwks_url_override is None and self.supabase_url is None
        ):
            raise ValueError(
                "SUPABASE_URL is not set: set it to your project's URL "
                "(https://<ref>.supabase.co), or set both AUTHSVC_ISSUER and "
                "AUTHSVC_JWKS_URL"
            )
        if self.callers is not None and self.callers_file is not None:
            raise ValueError("set AUTHSVC_CALLERS or AUTHSVC_CALLERS_FILE, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "set both AUTHSVC_TLS_CERT_FILE and AUTHSVC_TLS_KEY_FILE, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "AUTHSVC_TLS_CLIENT_CA_FILE needs AUTHSVC_TLS_CERT_FILE and "
                "AUTHSVC_TLS_KEY_FILE: client certificates need TLS"
            )
        if self.jwks_url is None and self.jwt_secret is None:
            raise ValueError(
                "AUTHSVC_JWKS_URL is 'off' and SUPABASE_JWT_SECRET is not set: "
                "nothing could verify a token"
            )
        return self

    @property
    def issuer(self) -> str | None:
        if self.issuer_override is not None:
            return self.issuer_override
        if self.supabase_url is not None:
            return self.supabase_url + ISSUER_PATH
        return None

    def require_issuer(self) -> str:
        """The issuer; validation guarantees there is one."""
        if self.issuer is None:
            raise ConfigError("SUPABASE_URL or AUTHSVC_ISSUER must be set")
        return self.issuer

    @property
    def jwks_url(self) -> str | None:
        """The JWKS URL, or None when switched off (`AUTHSVC_JWKS_URL=off`)."""
        if self.jwks_url_override is not None:
            if self.jwks_url_override.lower() == JWKS_OFF:
                return None
            return self.jwks_url_override
        if self.supabase_url is not None:
            return self.supabase_url + JWKS_PATH
        return None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read settings from an environment mapping; raise ConfigError if bad."""
        names = {field.alias for field in cls.model_fields.values() if field.alias}
        values = {name: environ[name] for name in names if name in environ}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, values)) from None

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str]) -> list[str]:
        """AUTHSVC_* variables nobody reads: most likely misspelled."""
        known = {field.alias for field in cls.model_fields.values()}
        known |= OTHER_KNOWN_VARIABLES
        return sorted(
            name
            for name in environ
            if name.startswith(OUR_PREFIX) and name not in known
        )

    def summary(self) -> dict[str, object]:
        """The settings as they may be logged: secrets masked."""
        return {
            "listen_addr": self.listen_addr,
            "workers": self.workers or "auto",
            "metrics_addr": self.metrics_addr,
            "issuer": self.issuer,
            "jwks_url": self.jwks_url or "off",
            "hs256_secret": "set" if self.jwt_secret is not None else "not set",
            "audiences": ",".join(self.audiences),
            "leeway_seconds": self.leeway_seconds,
            "jwks_ttl_seconds": self.jwks_ttl_seconds,
            "jwks_cooldown_seconds": self.jwks_cooldown_seconds,
            "token_cache_entries": self.token_cache_entries,
            "access_log": self.access_log,
            "database": "set" if self.database_url is not None else "not set",
            "db_schemas": ",".join(self.db_schemas),
            "db_admin": self.db_allow_admin,
            "callers": (
                "file" if self.callers_file else "env" if self.callers else "none"
            ),
            "allow_unauthenticated": self.allow_unauthenticated,
            "allowed_networks": ",".join(self.allowed_networks) or "any",
            "tls": "on" if self.tls_cert_file else "off",
        }


def _describe(exc: ValidationError, values: Mapping[str, str]) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = error["loc"][0] if error["loc"] else None
        message = error["msg"].removeprefix("Value error, ")
        if not isinstance(location, str):
            problems.append(message)
        elif location in _SECRET_VARIABLES:
            problems.append(f"{location} (value hidden): {message}")
        else:
            problems.append(f"{location}={values.get(location, '')!r}: {message}")
    return "; ".join(problems)
