"""DataService: proto requests → query objects → compiler → runner → proto."""

from __future__ import annotations

import logging
import time
from typing import Any

from authsvc.access import Caller, Scope
from authsvc.access.scopes import DEFAULT_SCHEMA
from authsvc.data import query
from authsvc.data.compiler import Compiler
from authsvc.data.runner import Result, RunAs, Runner
from authsvc.data.service import Database
from authsvc.errors import AuthsvcError, InvalidArgument, PermissionDenied, Reason
from authsvc.ops.metrics import Metrics
from authsvc.tokens import TokenVerifier
from authsvc.v1 import data_pb2

audit = logging.getLogger("authsvc.audit")

SERVICE = data_pb2.DESCRIPTOR.services_by_name["DataService"]
# Undefined table, column, function: the catalog changed under the cache.
CATALOG_DRIFT_SQLSTATES = frozenset({"42P01", "42703", "42883"})
SERVICE_NAME = SERVICE.full_name

_OPERATORS = {
    data_pb2.EQ: "eq",
    data_pb2.NEQ: "neq",
    data_pb2.GT: "gt",
    data_pb2.GTE: "gte",
    data_pb2.LT: "lt",
    data_pb2.LTE: "lte",
    data_pb2.LIKE: "like",
    data_pb2.ILIKE: "ilike",
    data_pb2.IN: "in",
    data_pb2.IS: "is",
    data_pb2.CONTAINS: "contains",
    data_pb2.CONTAINED_BY: "contained_by",
}
_NULLS = {
    data_pb2.OrderBy.NULLS_DEFAULT: None,
    data_pb2.OrderBy.NULLS_FIRST: "first",
    data_pb2.OrderBy.NULLS_LAST: "last",
}


class DataServicer:
    """DataService's methods, registered by `api.registry` behind the gate.

    Each method first decides who the statement runs as and checks that the
    caller's scopes allow it (data:read or data:write as a user or anon,
    data:admin for the table or function in admin mode), before any token is
    verified or SQL compiled.
    """

    def __init__(
        self, verifier: TokenVerifier, database: Database, metrics: Metrics
    ) -> None:
        if database.compiler is None or database.runner is None:
            raise ValueError("open the database before serving it")
        self._verifier = verifier
        self._database = database
        self._metrics = metrics
        self._compiler: Compiler = database.compiler
        self._runner: Runner = database.runner

    async def Select(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.RowsResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_READ, request)
        statement = await self._compiler.select(
            query.Select(
                target=_target(request.target),
                columns=tuple(request.columns),
                filter=_optional_filter(request),
                order=tuple(
                    query.Order(o.column, o.descending, _nulls(o.nulls))
                    for o in request.order
                ),
                limit=request.limit,
                offset=request.offset,
                count=request.count,
            )
        )
        return _rows(
            await self._run(
                run_as, statement, context, caller, "select", _named(request.target)
            )
        )

    async def Insert(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.RowsResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_WRITE, request)
        statement = await self._compiler.insert(
            query.Insert(
                target=_target(request.target),
                rows_json=request.rows_json,
                returning=tuple(request.returning.columns),
            )
        )
        return _rows(
            await self._run(
                run_as, statement, context, caller, "insert", _named(request.target)
            )
        )

    async def Upsert(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.RowsResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_WRITE, request)
        statement = await self._compiler.insert(
            query.Insert(
                target=_target(request.target),
                rows_json=request.rows_json,
                returning=tuple(request.returning.columns),
                on_conflict=tuple(request.on_conflict),
                ignore_duplicates=request.ignore_duplicates,
            )
        )
        return _rows(
            await self._run(
                run_as, statement, context, caller, "upsert", _named(request.target)
            )
        )

    async def Update(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.RowsResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_WRITE, request)
        statement = await self._compiler.update(
            query.Update(
                target=_target(request.target),
                values_json=request.values_json,
                filter=_optional_filter(request),
                all_rows=request.all_rows,
                returning=tuple(request.returning.columns),
                require_affected=request.require_affected,
                max_affected=request.max_affected,
            )
        )
        return _rows(
            await self._run(
                run_as, statement, context, caller, "update", _named(request.target)
            )
        )

    async def Delete(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.RowsResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_WRITE, request)
        statement = await self._compiler.delete(
            query.Delete(
                target=_target(request.target),
                filter=_optional_filter(request),
                all_rows=request.all_rows,
                returning=tuple(request.returning.columns),
                require_affected=request.require_affected,
                max_affected=request.max_affected,
            )
        )
        return _rows(
            await self._run(
                run_as, statement, context, caller, "delete", _named(request.target)
            )
        )

    async def Call(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.CallResponse:
        run_as = await self._run_as(request.mode, caller, Scope.DATA_READ, request)
        statement = await self._compiler.call(
            query.Call(request.schema, request.function, request.args_json)
        )
        # A VOLATILE function may write: as a user, that needs data:write.
        if not run_as.admin and statement.extra.get("volatile", True):
            caller.require(Scope.DATA_WRITE)
        result = await self._run(
            run_as,
            statement,
            context,
            caller,
            "call",
            f"{request.schema or DEFAULT_SCHEMA}.{request.function}",
        )
        return data_pb2.CallResponse(result_json=result.rows_json)

    async def ReloadSchema(
        self, request: Any, context: Any, caller: Caller
    ) -> data_pb2.ReloadSchemaResponse:
        caller.require(Scope.DATA_ADMIN)
        run_as = await self._run_as(request.mode, caller, Scope.DATA_ADMIN, request)
        if not run_as.admin:
            raise PermissionDenied(
                Reason.ADMIN_REQUIRED, "reloading the schema needs admin mode"
            )
        tables, functions = await self._database.reload_schema()
        return data_pb2.ReloadSchemaResponse(tables=tables, functions=functions)

    async def _run(
        self,
        run_as: RunAs,
        statement: query.Statement,
        context: Any,
        caller: Caller,
        operation: str,
        target: str,
    ) -> Result:
        started = time.perf_counter()
        try:
            result = await self._runner.run(run_as, statement, context.time_remaining())
        except AuthsvcError as exc:
            if exc.metadata.get("sqlstate") in CATALOG_DRIFT_SQLSTATES:
                self._database.mark_schema_stale()
            raise
        finally:
            self._metrics.observe_query(operation, time.perf_counter() - started)
        writes = operation != "select" and statement.extra.get("volatile", True)
        if run_as.admin and writes:
            # Every committed admin write, for the audit trail.
            audit.info(
                "admin write caller=%s operation=%s target=%s affected=%d",
                caller.name,
                operation,
                target,
                result.affected,
                extra={
                    "audit": True,
                    "operation": operation,
                    "target": target,
                    "affected": result.affected,
                },
            )
        return result

    async def _run_as(
        self, mode: Any, caller: Caller, user_scope: Scope, request: Any
    ) -> RunAs:
        """Who the request runs as, once the caller may; the mode must be explicit."""
        kind = mode.WhichOneof("kind")
        if kind == "admin":
            _require_admin_for(caller, request)
        elif kind in ("user_token", "anon"):
            caller.require(user_scope)
        else:
            raise InvalidArgument(
                Reason.MODE_MISSING,
                "set mode.user_token (the end user's token), mode.anon or mode.admin; "
                "a request without a mode is never run",
            )

        if kind == "user_token":
            run_as = RunAs("user", await self._verifier.verify(mode.user_token))
        else:
            run_as = RunAs(kind)
        # Refuse a disallowed role or mode before any SQL is compiled.
        self._runner.role_for(run_as)
        return run_as


def _require_admin_for(caller: Caller, request: Any) -> None:
    """data:admin, for the request's table or function where it names one."""
    if request.DESCRIPTOR.fields_by_name.get("target") is not None:
        target = request.target
        caller.require_admin_table(target.schema or DEFAULT_SCHEMA, target.table)
    elif request.DESCRIPTOR.fields_by_name.get("function") is not None:
        caller.require_admin_function(
            request.schema or DEFAULT_SCHEMA, request.function
        )
    else:
        caller.require(Scope.DATA_ADMIN)


def _nulls(value: Any) -> str | None:
    if value not in _NULLS:
        raise InvalidArgument(
            Reason.BAD_REQUEST,
            f"order nulls {value} is not one of NULLS_DEFAULT, NULLS_FIRST, NULLS_LAST",
        )
    return _NULLS[value]


def _named(target: Any) -> str:
    return f"{target.schema or DEFAULT_SCHEMA}.{target.table}"


def _optional_filter(request: Any) -> query.Filter | None:
    return _filter(request.filter) if request.HasField("filter") else None


def _target(target: Any) -> query.Target:
    return query.Target(schema=target.schema, table=target.table)


def _filter(node: Any) -> query.Filter:
    kind = node.WhichOneof("kind")
    if kind == "condition":
        condition = node.condition
        op = _OPERATORS.get(condition.op)
        if op is None:
            raise InvalidArgument(
                Reason.BAD_FILTER, "a filter condition has no operator"
            )
        return query.Condition(
            condition.column, op, condition.value_json, negate=node.negate
        )
    if kind in ("all_of", "any_of"):
        group = getattr(node, kind)
        return query.Group(
            tuple(_filter(item) for item in group.filters),
            any_=kind == "any_of",
            negate=node.negate,
        )
    raise InvalidArgument(Reason.BAD_FILTER, "a filter node is empty")


def _rows(result: Result) -> data_pb2.RowsResponse:
    response = data_pb2.RowsResponse(
        rows_json=result.rows_json,
        affected=result.affected,
        truncated=result.truncated,
    )
    if result.count is not None:
        response.count = result.count
    return response
