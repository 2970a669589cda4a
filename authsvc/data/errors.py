"""The one translation of asyncpg and Postgres errors into ours.

Postgres' SQLSTATE decides the status. The names Postgres reports (table,
column, constraint) go into the metadata; its message too, because Postgres
builds it from identifiers, not from row values. Its DETAIL can quote row
values (`Key (email)=(a@b.c) already exists`), including rows RLS hides, so
it is passed on only in admin mode.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from authsvc.errors import (
    AlreadyExists,
    AuthsvcError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unavailable,
)

logger = logging.getLogger(__name__)

_BY_SQLSTATE: dict[str, tuple[type[AuthsvcError], Reason]] = {
    "23505": (AlreadyExists, Reason.UNIQUE_VIOLATION),
    "23503": (FailedPrecondition, Reason.FOREIGN_KEY_VIOLATION),
    "23514": (FailedPrecondition, Reason.CHECK_VIOLATION),
    "23502": (FailedPrecondition, Reason.NOT_NULL_VIOLATION),
    "23P01": (FailedPrecondition, Reason.EXCLUSION_VIOLATION),
    "42501": (PermissionDenied, Reason.INSUFFICIENT_PRIVILEGE),
    # A read (Select, or a STABLE function) that tried to write: the
    # transaction is READ ONLY, so a view or function cannot write behind
    # the caller's data:read scope.
    "25006": (PermissionDenied, Reason.INSUFFICIENT_PRIVILEGE),
    "57014": (DeadlineExceeded, Reason.STATEMENT_TIMEOUT),
}
# Connection-level trouble: the database or the pooler is not there.
_UNAVAILABLE_CLASSES = ("08", "53", "57P", "58")
# TimeoutError (an OSError) is also what the pool raises when no connection
# frees up within the acquire timeout.
CONNECTION_ERRORS = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
)


def translate(exc: BaseException, *, admin: bool) -> AuthsvcError:
    """Our error for an exception raised while running a statement."""
    if isinstance(exc, asyncpg.PostgresError):
        return _from_postgres(exc, admin=admin)
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and not isinstance(
        exc, asyncpg.exceptions.ConnectionDoesNotExistError
    ):
        # Usually a closed connection, but also how asyncpg reports misuse:
        # keep the traceback so a bug does not hide behind UNAVAILABLE.
        logger.error("driver interface error", exc_info=exc)
    if isinstance(exc, TimeoutError):
        return ResourceExhausted(
            Reason.POOL_EXHAUSTED,
            "no database connection became free in time; retry with backoff",
        )
    return Unavailable(
        Reason.DATABASE_UNAVAILABLE,
        f"the database is unavailable ({type(exc).__name__}); retry later",
    )


def _from_postgres(exc: Any, *, admin: bool) -> AuthsvcError:
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    metadata = {"sqlstate": sqlstate}
    for attribute, key in (
        ("table_name", "table"),
        ("column_name", "column"),
        ("constraint_name", "constraint"),
        ("schema_name", "schema"),
    ):
        value = getattr(exc, attribute, None)
        if value:
            metadata[key] = str(value)
    detail = getattr(exc, "detail", None)
    if admin and detail:
        metadata["detail"] = str(detail)
    message = str(getattr(exc, "message", "") or exc)

    if sqlstate in _BY_SQLSTATE:
        error_class, reason = _BY_SQLSTATE[sqlstate]
        return error_class(reason, message, metadata)
    if sqlstate == "26000":
        # A prepared statement vanished: a transaction pooler asyncpg was not
        # told about. Retryable for the caller, a configuration fix for us.
        logger.error(
            "prepared statement lost: if DATABASE_URL is a transaction pooler "
            "not on port 6543, add ?pgbouncer=true"
        )
        return Unavailable(Reason.DATABASE_UNAVAILABLE, message, metadata)
    if sqlstate.startswith("22"):
        return InvalidArgument(Reason.DATA_ERROR, message, metadata)
    if sqlstate.startswith("44"):  # a view's WITH CHECK OPTION
        return FailedPrecondition(Reason.CHECK_VIOLATION, message, metadata)
    if sqlstate == "55000":  # e.g. an unpopulated materialized view
        return FailedPrecondition(Reason.BAD_REQUEST, message, metadata)
    if sqlstate.startswith(("0A", "21", "54")):
        # Not supported for this object, a row changed twice in one upsert,
        # or a Postgres limit: the request cannot run as asked.
        return InvalidArgument(Reason.BAD_REQUEST, message, metadata)
    if sqlstate.startswith(_UNAVAILABLE_CLASSES):
        return Unavailable(Reason.DATABASE_UNAVAILABLE, message, metadata)
    if sqlstate.startswith(("42", "2F", "P0", "39")):
        # Errors in the function a caller chose to Call, or in our SQL for a
        # shape the catalog allowed (an ambiguous cast, say): the caller's
        # request cannot run as asked.
        return InvalidArgument(Reason.BAD_REQUEST, message, metadata)
    logger.error("unmapped postgres error sqlstate=%s", sqlstate)
    return Unavailable(Reason.DATABASE_UNAVAILABLE, message, metadata)
