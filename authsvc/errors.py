"""The error tree: one root, one base per gRPC status family we return.

The core raises these; `authsvc.api.status` turns them into a gRPC status with
an `ErrorInfo` detail, in one place. Nothing here imports grpc, so the core
stays testable alone. Messages never contain a token, a key or a secret.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

ERROR_DOMAIN = "authsvc"


class Status(enum.Enum):
    """The gRPC status families this service returns (names match grpc's)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class Reason(enum.StrEnum):
    """Machine-readable reasons, documented in protos/authsvc/v1/auth.proto."""

    MALFORMED = "MALFORMED"
    ALGORITHM_NOT_ALLOWED = "ALGORITHM_NOT_ALLOWED"
    HEADER_NOT_ALLOWED = "HEADER_NOT_ALLOWED"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
    BAD_ISSUER = "BAD_ISSUER"
    BAD_AUDIENCE = "BAD_AUDIENCE"
    INVALID_CLAIM = "INVALID_CLAIM"
    ANONYMOUS_NOT_ALLOWED = "ANONYMOUS_NOT_ALLOWED"
    TOKEN_TOO_LARGE = "TOKEN_TOO_LARGE"
    TOKEN_MISSING = "TOKEN_MISSING"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    # Callers (every service; documented in protos/authsvc/v1/auth.proto).
    CALLER_KEY_MISSING = "CALLER_KEY_MISSING"
    CALLER_KEY_INVALID = "CALLER_KEY_INVALID"
    SCOPE_MISSING = "SCOPE_MISSING"
    NETWORK_NOT_ALLOWED = "NETWORK_NOT_ALLOWED"
    TOO_MANY_CONCURRENT_CALLS = "TOO_MANY_CONCURRENT_CALLS"
    RATE_LIMITED = "RATE_LIMITED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    # Data access (documented in protos/authsvc/v1/data.proto).
    MODE_MISSING = "MODE_MISSING"
    UNKNOWN_TABLE = "UNKNOWN_TABLE"
    UNKNOWN_COLUMN = "UNKNOWN_COLUMN"
    UNKNOWN_FUNCTION = "UNKNOWN_FUNCTION"
    BAD_FILTER = "BAD_FILTER"
    BAD_VALUE = "BAD_VALUE"
    BAD_REQUEST = "BAD_REQUEST"
    UNFILTERED_WRITE = "UNFILTERED_WRITE"
    DATA_ERROR = "DATA_ERROR"
    ADMIN_DISABLED = "ADMIN_DISABLED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    INSUFFICIENT_PRIVILEGE = "INSUFFICIENT_PRIVILEGE"
    UNIQUE_VIOLATION = "UNIQUE_VIOLATION"
    FOREIGN_KEY_VIOLATION = "FOREIGN_KEY_VIOLATION"
    CHECK_VIOLATION = "CHECK_VIOLATION"
    NOT_NULL_VIOLATION = "NOT_NULL_VIOLATION"
    EXCLUSION_VIOLATION = "EXCLUSION_VIOLATION"
    NO_ROWS_AFFECTED = "NO_ROWS_AFFECTED"
    TOO_MANY_ROWS = "TOO_MANY_ROWS"
    ADMIN_REQUIRED = "ADMIN_REQUIRED"
    STATEMENT_TIMEOUT = "STATEMENT_TIMEOUT"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    POOL_EXHAUSTED = "POOL_EXHAUSTED"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    KEYS_UNAVAILABLE = "KEYS_UNAVAILABLE"
    INTERNAL = "INTERNAL"


class AuthsvcError(Exception):
    """Root of every error this service reports to a caller."""

    status: Status = Status.INTERNAL

    def __init__(
        self,
        reason: Reason,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(AuthsvcError):
    status = Status.INVALID_ARGUMENT


class Unauthenticated(AuthsvcError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(AuthsvcError):
    status = Status.PERMISSION_DENIED


class NotFound(AuthsvcError):
    status = Status.NOT_FOUND


class AlreadyExists(AuthsvcError):
    status = Status.ALREADY_EXISTS


class FailedPrecondition(AuthsvcError):
    status = Status.FAILED_PRECONDITION


class ResourceExhausted(AuthsvcError):
    status = Status.RESOURCE_EXHAUSTED


class Unavailable(AuthsvcError):
    status = Status.UNAVAILABLE


class DeadlineExceeded(AuthsvcError):
    status = Status.DEADLINE_EXCEEDED


class TokenRejected(Unauthenticated):
    """The token is not acceptable; `reason` says why."""


class TokenTooLarge(InvalidArgument):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            Reason.TOKEN_TOO_LARGE,
            f"token is longer than the maximum of {max_bytes} bytes; it was not decoded",
            {"max_bytes": str(max_bytes)},
        )
        self.max_bytes = max_bytes


class TokenMissing(InvalidArgument):
    def __init__(self) -> None:
        super().__init__(
            Reason.TOKEN_MISSING,
            "token is empty: pass the access token without the 'Bearer ' prefix",
        )


class AnonymousNotAllowed(PermissionDenied):
    def __init__(self) -> None:
        super().__init__(
            Reason.ANONYMOUS_NOT_ALLOWED,
            "the token belongs to an anonymous sign-in and reject_anonymous was set",
        )


class KeysUnavailable(Unavailable):
    """No key set could be fetched and none is cached."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            Reason.KEYS_UNAVAILABLE,
            f"signing keys are unavailable ({cause}); retry later",
        )
        self.cause = cause
