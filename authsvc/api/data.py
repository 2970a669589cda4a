"""DataService: proto requests → query objects → compiler → runner → proto."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from authsvc.api.status import unary_errors
from authsvc.data import query
from authsvc.data.compiler import Compiler
from authsvc.data.runner import Caller, Result, Runner
from authsvc.data.service import Database
from authsvc.errors import AuthsvcError, InvalidArgument, PermissionDenied, Reason
from authsvc.tokens import TokenVerifier
from authsvc.v1 import data_pb2, data_pb2_grpc

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


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(self, verifier: TokenVerifier, database: Database) -> None:
        if database.compiler is None or database.runner is None:
            raise ValueError("open the database before serving it")
        self._verifier = verifier
        self._database = database
        self._compiler: Compiler = database.compiler
        self._runner: Runner = database.runner

    @unary_errors("Select")
    async def Select(self, request: Any, context: Any) -> data_pb2.RowsResponse:
        return await self._rows(
            request,
            context,
            lambda: self._compiler.select(
                query.Select(
                    target=_target(request.target),
                    columns=tuple(request.columns),
                    filter=_optional_filter(request),
                    order=tuple(
                        query.Order(o.column, o.descending, _NULLS.get(o.nulls))
                        for o in request.order
                    ),
                    limit=request.limit,
                    offset=request.offset,
                    count=request.count,
                )
            ),
        )

    @unary_errors("Insert")
    async def Insert(self, request: Any, context: Any) -> data_pb2.RowsResponse:
        return await self._rows(
            request,
            context,
            lambda: self._compiler.insert(
                query.Insert(
                    target=_target(request.target),
                    rows_json=request.rows_json,
                    returning=tuple(request.returning.columns),
                )
            ),
        )

    @unary_errors("Upsert")
    async def Upsert(self, request: Any, context: Any) -> data_pb2.RowsResponse:
        return await self._rows(
            request,
            context,
            lambda: self._compiler.insert(
                query.Insert(
                    target=_target(request.target),
                    rows_json=request.rows_json,
                    returning=tuple(request.returning.columns),
                    on_conflict=tuple(request.on_conflict),
                    ignore_duplicates=request.ignore_duplicates,
                )
            ),
        )

    @unary_errors("Update")
    async def Update(self, request: Any, context: Any) -> data_pb2.RowsResponse:
        return await self._rows(
            request,
            context,
            lambda: self._compiler.update(
                query.Update(
                    target=_target(request.target),
                    values_json=request.values_json,
                    filter=_optional_filter(request),
                    all_rows=request.all_rows,
                    returning=tuple(request.returning.columns),
                    require_affected=request.require_affected,
                    max_affected=request.max_affected,
                )
            ),
        )

    @unary_errors("Delete")
    async def Delete(self, request: Any, context: Any) -> data_pb2.RowsResponse:
        return await self._rows(
            request,
            context,
            lambda: self._compiler.delete(
                query.Delete(
                    target=_target(request.target),
                    filter=_optional_filter(request),
                    all_rows=request.all_rows,
                    returning=tuple(request.returning.columns),
                    require_affected=request.require_affected,
                    max_affected=request.max_affected,
                )
            ),
        )

    @unary_errors("Call")
    async def Call(self, request: Any, context: Any) -> data_pb2.CallResponse:
        caller = await self._caller(request.mode)
        statement = await self._compiler.call(
            query.Call(request.schema, request.function, request.args_json)
        )
        result = await self._run(caller, statement, context)
        return data_pb2.CallResponse(result_json=result.rows_json)

    @unary_errors("ReloadSchema")
    async def ReloadSchema(
        self, request: Any, context: Any
    ) -> data_pb2.ReloadSchemaResponse:
        caller = await self._caller(request.mode)
        if not caller.admin:
            raise PermissionDenied(
                Reason.ADMIN_REQUIRED, "reloading the schema needs admin mode"
            )
        tables, functions = await self._database.reload_schema()
        return data_pb2.ReloadSchemaResponse(tables=tables, functions=functions)

    async def _rows(
        self,
        request: Any,
        context: Any,
        compile_statement: Callable[[], Awaitable[query.Statement]],
    ) -> data_pb2.RowsResponse:
        """Check the mode first, then compile and run a rows statement."""
        caller = await self._caller(request.mode)
        statement = await compile_statement()
        return _rows(await self._run(caller, statement, context))

    async def _run(
        self, caller: Caller, statement: query.Statement, context: Any
    ) -> Result:
        try:
            return await self._runner.run(caller, statement, context.time_remaining())
        except AuthsvcError as exc:
            if exc.metadata.get("sqlstate") in CATALOG_DRIFT_SQLSTATES:
                self._database.mark_schema_stale()
            raise

    async def _caller(self, mode: Any) -> Caller:
        """Who the request runs as; the mode must be explicit."""
        kind = mode.WhichOneof("kind")
        if kind == "user_token":
            token = await self._verifier.verify(mode.user_token)
            caller = Caller("user", token)
        elif kind in ("admin", "anon"):
            caller = Caller(kind)
        else:
            raise InvalidArgument(
                Reason.MODE_MISSING,
                "set mode.user_token (the end user's token), mode.anon or mode.admin; "
                "a request without a mode is never run",
            )
        # Refuse a disallowed role or mode before any SQL is compiled.
        self._runner.role_for(caller)
        return caller


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
