"""Running a compiled statement: one transaction, the right role, a deadline.

Per request, inside one transaction and only there:
- the role: the token's role if it is on the allowlist (user mode),
  `service_role` (admin) or `anon`;
- `request.jwt.claims` and `request.jwt.claim.sub`/`.role`, so auth.uid(),
  auth.role() and auth.jwt() behave as behind Supabase's Data API;
- `statement_timeout` from the call's deadline.
All are set with `set_config(..., true)` (transaction-local) from bound
parameters, so the next transaction on the same pooled connection sees none
of it, whether this one committed or failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import asyncpg

from authsvc.data.errors import CONNECTION_ERRORS, translate
from authsvc.data.query import Statement
from authsvc.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from authsvc.tokens import VerifiedToken

logger = logging.getLogger(__name__)

ADMIN_ROLE = "service_role"
ANON_ROLE = "anon"
MIN_STATEMENT_TIMEOUT_MS = 1

# Every data transaction's settings (public: the bench's direct baseline
# runs the same statement).
SETUP_SQL = (
    "SELECT set_config('role', $1, true), "
    "set_config('request.jwt.claims', $2, true), "
    "set_config('request.jwt.claim.sub', $3, true), "
    "set_config('request.jwt.claim.role', $4, true), "
    "set_config('statement_timeout', $5, true), "
    # Read first by auth.jwt(): cleared, whatever a session may have set.
    "set_config('request.jwt.claim', '', true)"
)


@dataclass(frozen=True)
class RunAs:
    """Who a statement runs as."""

    kind: str  # "user", "admin" or "anon"
    token: VerifiedToken | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "admin"


@dataclass(frozen=True)
class Result:
    rows_json: str
    affected: int
    count: int | None = None
    truncated: bool = False


class Runner:
    def __init__(
        self,
        pool: Any,
        *,
        user_roles: frozenset[str],
        admin_enabled: bool,
        default_timeout_seconds: float,
        max_timeout_seconds: float,
        acquire_timeout_seconds: float,
        max_result_bytes: int,
    ) -> None:
        self._pool = pool
        self._user_roles = user_roles
        self._admin_enabled = admin_enabled
        self._default_timeout = default_timeout_seconds
        self._max_timeout = max_timeout_seconds
        self._acquire_timeout = acquire_timeout_seconds
        self._max_result_bytes = max_result_bytes
        # Requests waiting for a pooled connection right now (for metrics).
        self.waiting = 0

    def role_for(self, run_as: RunAs) -> str:
        """The Postgres role a request runs as, or PermissionDenied."""
        if run_as.kind == "admin":
            if not self._admin_enabled:
                raise PermissionDenied(
                    Reason.ADMIN_DISABLED,
                    "admin mode is disabled on this server "
                    "(the operator enables it with AUTHSVC_DB_ALLOW_ADMIN=true)",
                )
            return ADMIN_ROLE
        if run_as.kind == "anon":
            return ANON_ROLE
        assert run_as.token is not None  # noqa: S101 (user mode carries its token)
        role = run_as.token.claims.get("role")
        if not isinstance(role, str) or role not in self._user_roles:
            raise PermissionDenied(
                Reason.ROLE_NOT_ALLOWED,
                "the token's role is not allowed for data access; allowed: "
                + ", ".join(sorted(self._user_roles)),
            )
        return role

    async def run(
        self, run_as: RunAs, statement: Statement, time_remaining: float | None
    ) -> Result:
        role = self.role_for(run_as)
        claims, sub = _claims_for(run_as, role)
        budget = time_remaining if time_remaining is not None else self._default_timeout
        budget = min(budget, self._max_timeout)
        timeout_ms = str(max(MIN_STATEMENT_TIMEOUT_MS, math.floor(budget * 1000)))

        waiting = True
        self.waiting += 1
        try:
            # The deadline is ours rather than the pool's `timeout=`, which
            # runs every acquire as a task of its own (asyncio.wait_for).
            async with asyncio.timeout(self._acquire_timeout):
                conn = await self._pool.acquire()
            waiting = False
            self.waiting -= 1
            try:
                return await self._in_transaction(
                    conn, statement, (role, claims, sub, role, timeout_ms)
                )
            finally:
                await self._pool.release(conn, timeout=self._acquire_timeout)
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            raise translate(exc, admin=run_as.admin) from exc
        finally:
            if waiting:
                self.waiting -= 1

    async def _in_transaction(
        self, conn: Any, statement: Statement, settings: tuple[str, ...]
    ) -> Result:
        async with conn.transaction(readonly=statement.read_only):
            await conn.execute(SETUP_SQL, *settings)
            row = await conn.fetchrow(statement.sql, *statement.params)
            # Raised inside the transaction, so a refused write rolls back.
            return self._result(statement, row)

    def _result(self, statement: Statement, row: Any) -> Result:
        if statement.kind == "call":
            if statement.extra.get("void"):
                return Result(rows_json="null", affected=0)
            self._check_size(row)
            text = row["rows_json"]
            return Result(rows_json=text if text is not None else "null", affected=0)

        self._check_size(row)
        rows_json = row["rows_json"]
        fetched = int(row["fetched"])
        cap = statement.extra.get("cap")
        truncated = (
            bool(statement.extra.get("capped"))
            and isinstance(cap, int)
            and fetched > cap
        )
        affected = min(fetched, cap) if isinstance(cap, int) else fetched
        if statement.max_affected and affected > statement.max_affected:
            raise FailedPrecondition(
                Reason.TOO_MANY_ROWS,
                f"the write would change {affected} rows, more than the limit of "
                f"{statement.max_affected} (the request's max_affected or the "
                "server's AUTHSVC_DB_MAX_AFFECTED); nothing was changed",
                {"affected": str(affected)},
            )
        if statement.require_affected and affected == 0:
            raise NotFound(
                Reason.NO_ROWS_AFFECTED,
                "no row matched (or row-level security hid every match)",
            )
        count = int(row["total"]) if "total" in row else None
        return Result(rows_json, affected, count, truncated)

    def _check_size(self, row: Any) -> None:
        """The size Postgres measured; above the limit it sent no rows."""
        size = row.get("size")
        if size is not None and size > self._max_result_bytes:
            raise ResourceExhausted(
                Reason.RESULT_TOO_LARGE,
                f"the result is larger than {self._max_result_bytes} bytes; "
                "ask for fewer rows with a limit (and page with offset)",
                {"max_bytes": str(self._max_result_bytes)},
            )


def _claims_for(run_as: RunAs, role: str) -> tuple[str, str]:
    if run_as.token is not None:
        return json.dumps(run_as.token.claims), run_as.token.sub
    return json.dumps({"role": role}), ""
