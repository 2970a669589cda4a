"""The fluent query builder: supabase-py's `.table(...)` chain, compiled to
DataService requests.

Each method returns a new builder, so a base query can be reused with
different filters. Nothing is sent until `await ....execute()`; `to_request()`
shows the proto request a chain compiles to. Values are encoded as JSON
(datetime, date and time as ISO 8601, UUID and Decimal as strings, which
Postgres converts exactly), and filters are ANDed, each negated by `not_`.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

from authsvc.v1 import data_pb2

# The DataService method name, the request, the call's timeout (None: default).
Send = Callable[[str, Any, float | None], Awaitable[Any]]
Columns = str | Sequence[str]
Row = Mapping[str, Any]

_IS_VALUES: dict[Any, Any] = {None: None, True: True, False: False}
_IS_WORDS = {"null": None, "true": True, "false": False}


@dataclass(frozen=True)
class Rows:
    """What a select or write returns.

    `data`: the rows, one dict per row (of the `returning` columns for a
    write). `count`: every matching row, with `select(count="exact")`.
    `affected`: rows written, or rows returned by a select. `truncated`: the
    server's row cap cut the result.
    """

    data: list[dict[str, Any]]
    count: int | None
    affected: int
    truncated: bool


@dataclass(frozen=True)
class CallResult:
    """A function's result: a JSON value, or a list of rows for set-returning
    functions."""

    data: Any


@dataclass(frozen=True)
class SchemaReload:
    """What the server knows after `reload_schema()`."""

    tables: int
    functions: int


@dataclass(frozen=True, kw_only=True)
class _Query:
    _send: Send
    _mode: data_pb2.Mode
    _target: data_pb2.Target


@dataclass(frozen=True, kw_only=True)
class _Filtered(_Query):
    """Filters for select, update and delete: `eq`, `gt`, `in_`, ..."""

    _filters: tuple[data_pb2.Filter, ...] = ()
    _negate_next: bool = False

    @property
    def not_(self) -> Self:
        """Negate the next filter: `.not_.eq("status", "done")`."""
        return replace(self, _negate_next=True)

    def eq(self, column: str, value: Any) -> Self:
        """`column = value`; use `is_` for NULL."""
        return self._where(column, data_pb2.EQ, value)

    def neq(self, column: str, value: Any) -> Self:
        return self._where(column, data_pb2.NEQ, value)

    def gt(self, column: str, value: Any) -> Self:
        return self._where(column, data_pb2.GT, value)

    def gte(self, column: str, value: Any) -> Self:
        return self._where(column, data_pb2.GTE, value)

    def lt(self, column: str, value: Any) -> Self:
        return self._where(column, data_pb2.LT, value)

    def lte(self, column: str, value: Any) -> Self:
        return self._where(column, data_pb2.LTE, value)

    def like(self, column: str, pattern: str) -> Self:
        """`column LIKE pattern`, with `%` and `_` wildcards."""
        return self._where(column, data_pb2.LIKE, pattern)

    def ilike(self, column: str, pattern: str) -> Self:
        return self._where(column, data_pb2.ILIKE, pattern)

    def is_(self, column: str, value: bool | str | None) -> Self:
        """`column IS NULL / TRUE / FALSE`; "null", "true", "false" also work."""
        if isinstance(value, str) and value.lower() in _IS_WORDS:
            value = _IS_WORDS[value.lower()]
        elif isinstance(value, str) or value not in _IS_VALUES:
            raise ValueError(f"is_ takes None, True or False, got {value!r}")
        return self._where(column, data_pb2.IS, value)

    def in_(self, column: str, values: Sequence[Any]) -> Self:
        """`column` equals one of `values`."""
        return self._where(column, data_pb2.IN, list(values))

    def contains(self, column: str, value: Any) -> Self:
        """`column @> value`, for jsonb and array columns."""
        return self._where(column, data_pb2.CONTAINS, value)

    def contained_by(self, column: str, value: Any) -> Self:
        """`column <@ value`, for jsonb and array columns."""
        return self._where(column, data_pb2.CONTAINED_BY, value)

    def match(self, values: Row) -> Self:
        """`eq` for each column and value of `values`."""
        query = self
        for column, value in values.items():
            query = query.eq(column, value)
        return query

    def _where(self, column: str, op: data_pb2.Operator, value: Any) -> Self:
        condition = data_pb2.Condition(column=column, op=op, value_json=_json(value))
        node = data_pb2.Filter(condition=condition, negate=self._negate_next)
        return replace(self, _filters=(*self._filters, node), _negate_next=False)

    def _filter(self) -> data_pb2.Filter | None:
        if self._negate_next:
            raise ValueError("not_ must be followed by a filter, such as not_.eq(...)")
        if not self._filters:
            return None
        if len(self._filters) == 1:
            return self._filters[0]
        return data_pb2.Filter(all_of=data_pb2.FilterGroup(filters=self._filters))


@dataclass(frozen=True, kw_only=True)
class SelectQuery(_Filtered):
    _columns: tuple[str, ...] = ()
    _order: tuple[data_pb2.OrderBy, ...] = ()
    _limit: int = 0
    _offset: int = 0
    _count: bool = False

    def order(
        self,
        column: str,
        *,
        desc: bool = False,
        nullsfirst: bool = False,
        nullslast: bool = False,
    ) -> Self:
        """Sort by `column`; call again for the next sort key."""
        if nullsfirst and nullslast:
            raise ValueError("choose one of nullsfirst and nullslast")
        nulls = data_pb2.OrderBy.NULLS_DEFAULT
        if nullsfirst:
            nulls = data_pb2.OrderBy.NULLS_FIRST
        elif nullslast:
            nulls = data_pb2.OrderBy.NULLS_LAST
        order = data_pb2.OrderBy(column=column, descending=desc, nulls=nulls)
        return replace(self, _order=(*self._order, order))

    def limit(self, count: int) -> Self:
        """At most `count` rows (the server also caps every result)."""
        if count < 1:
            # 0 means "the server's maximum" in the request, not "no rows".
            raise ValueError(f"limit must be at least 1, got {count}")
        return replace(self, _limit=count)

    def offset(self, count: int) -> Self:
        """Skip the first `count` rows."""
        return replace(self, _offset=count)

    def range(self, start: int, end: int) -> Self:
        """Rows `start` to `end`, both included, counted from 0."""
        if end < start:
            raise ValueError(f"range end {end} is before its start {start}")
        return replace(self, _offset=start, _limit=end - start + 1)

    def to_request(self) -> data_pb2.SelectRequest:
        return data_pb2.SelectRequest(
            mode=self._mode,
            target=self._target,
            columns=self._columns,
            filter=self._filter(),
            order=self._order,
            limit=self._limit,
            offset=self._offset,
            count=self._count,
        )

    async def execute(self, *, timeout: float | None = None) -> Rows:
        return _rows(await self._send("Select", self.to_request(), timeout))


@dataclass(frozen=True, kw_only=True)
class InsertQuery(_Query):
    _rows: str
    _returning: tuple[str, ...] = ()

    def to_request(self) -> data_pb2.InsertRequest:
        return data_pb2.InsertRequest(
            mode=self._mode,
            target=self._target,
            rows_json=self._rows,
            returning=data_pb2.Returning(columns=self._returning),
        )

    async def execute(self, *, timeout: float | None = None) -> Rows:
        return _rows(await self._send("Insert", self.to_request(), timeout))


@dataclass(frozen=True, kw_only=True)
class UpsertQuery(_Query):
    _rows: str
    _on_conflict: tuple[str, ...] = ()
    _ignore_duplicates: bool = False
    _returning: tuple[str, ...] = ()

    def to_request(self) -> data_pb2.UpsertRequest:
        return data_pb2.UpsertRequest(
            mode=self._mode,
            target=self._target,
            rows_json=self._rows,
            on_conflict=self._on_conflict,
            ignore_duplicates=self._ignore_duplicates,
            returning=data_pb2.Returning(columns=self._returning),
        )

    async def execute(self, *, timeout: float | None = None) -> Rows:
        return _rows(await self._send("Upsert", self.to_request(), timeout))


@dataclass(frozen=True, kw_only=True)
class UpdateQuery(_Filtered):
    _values: str
    _returning: tuple[str, ...] = ()
    _all_rows: bool = False
    _require_affected: bool = False
    _max_affected: int = 0

    def to_request(self) -> data_pb2.UpdateRequest:
        return data_pb2.UpdateRequest(
            mode=self._mode,
            target=self._target,
            values_json=self._values,
            filter=self._filter(),
            all_rows=self._all_rows,
            returning=data_pb2.Returning(columns=self._returning),
            require_affected=self._require_affected,
            max_affected=self._max_affected,
        )

    async def execute(self, *, timeout: float | None = None) -> Rows:
        return _rows(await self._send("Update", self.to_request(), timeout))


@dataclass(frozen=True, kw_only=True)
class DeleteQuery(_Filtered):
    _returning: tuple[str, ...] = ()
    _all_rows: bool = False
    _require_affected: bool = False
    _max_affected: int = 0

    def to_request(self) -> data_pb2.DeleteRequest:
        return data_pb2.DeleteRequest(
            mode=self._mode,
            target=self._target,
            filter=self._filter(),
            all_rows=self._all_rows,
            returning=data_pb2.Returning(columns=self._returning),
            require_affected=self._require_affected,
            max_affected=self._max_affected,
        )

    async def execute(self, *, timeout: float | None = None) -> Rows:
        return _rows(await self._send("Delete", self.to_request(), timeout))


@dataclass(frozen=True, kw_only=True)
class RpcQuery:
    _send: Send
    _mode: data_pb2.Mode
    _schema: str
    _function: str
    _args: str

    def to_request(self) -> data_pb2.CallRequest:
        return data_pb2.CallRequest(
            mode=self._mode,
            schema=self._schema,
            function=self._function,
            args_json=self._args,
        )

    async def execute(self, *, timeout: float | None = None) -> CallResult:
        response = await self._send("Call", self.to_request(), timeout)
        return CallResult(json.loads(response.result_json))


@dataclass(frozen=True, kw_only=True)
class Table(_Query):
    """`.table(name)`: pick the operation next."""

    def select(
        self, *columns: str, count: Literal["exact"] | None = None
    ) -> SelectQuery:
        """Rows with `columns` ("id,total" or "id", "total"); none: every column.

        `count="exact"` also counts every matching row, ignoring limit and
        offset (authsvc has no planned or estimated counts).
        """
        if count not in (None, "exact"):
            raise ValueError(f'count must be "exact" or None, got {count!r}')
        return SelectQuery(
            _send=self._send,
            _mode=self._mode,
            _target=self._target,
            _columns=_column_names(columns),
            _count=count == "exact",
        )

    def insert(
        self, rows: Row | Sequence[Row], *, returning: Columns = ()
    ) -> InsertQuery:
        """Insert one row or many; a key missing from one row is NULL there.

        Writes return rows only for the `returning` columns ("id,created_at").
        """
        return InsertQuery(
            _send=self._send,
            _mode=self._mode,
            _target=self._target,
            _rows=_json(rows),
            _returning=_column_names(returning),
        )

    def upsert(
        self,
        rows: Row | Sequence[Row],
        *,
        on_conflict: Columns = (),
        ignore_duplicates: bool = False,
        returning: Columns = (),
    ) -> UpsertQuery:
        """Insert, or on a conflict on `on_conflict` (default: the primary
        key) update the row, or skip it with `ignore_duplicates`."""
        return UpsertQuery(
            _send=self._send,
            _mode=self._mode,
            _target=self._target,
            _rows=_json(rows),
            _on_conflict=_column_names(on_conflict),
            _ignore_duplicates=ignore_duplicates,
            _returning=_column_names(returning),
        )

    def update(
        self,
        values: Row,
        *,
        returning: Columns = (),
        all_rows: bool = False,
        require_affected: bool = False,
        max_affected: int = 0,
    ) -> UpdateQuery:
        """Set `values` on the rows the filters match.

        Without filters the server refuses the update unless `all_rows`.
        `require_affected` makes "no row changed" a `NotFound`;
        `max_affected` refuses (changing nothing) a larger update.
        """
        return UpdateQuery(
            _send=self._send,
            _mode=self._mode,
            _target=self._target,
            _values=_json(values),
            _returning=_column_names(returning),
            _all_rows=all_rows,
            _require_affected=require_affected,
            _max_affected=max_affected,
        )

    def delete(
        self,
        *,
        returning: Columns = (),
        all_rows: bool = False,
        require_affected: bool = False,
        max_affected: int = 0,
    ) -> DeleteQuery:
        """Delete the rows the filters match; the options are as for update."""
        return DeleteQuery(
            _send=self._send,
            _mode=self._mode,
            _target=self._target,
            _returning=_column_names(returning),
            _all_rows=all_rows,
            _require_affected=require_affected,
            _max_affected=max_affected,
        )


def rpc_query(
    send: Send, mode: data_pb2.Mode, schema: str, function: str, params: Row | None
) -> RpcQuery:
    return RpcQuery(
        _send=send,
        _mode=mode,
        _schema=schema,
        _function=function,
        _args=_json(dict(params or {})),
    )


def _column_names(columns: Columns) -> tuple[str, ...]:
    parts = (columns,) if isinstance(columns, str) else tuple(columns)
    return tuple(
        name.strip() for part in parts for name in part.split(",") if name.strip()
    )


def _rows(response: data_pb2.RowsResponse) -> Rows:
    return Rows(
        data=json.loads(response.rows_json or "[]"),
        count=response.count if response.HasField("count") else None,
        affected=response.affected,
        truncated=response.truncated,
    )


def _json(value: Any) -> str:
    return json.dumps(value, default=_jsonable, allow_nan=False, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    raise TypeError(
        f"{type(value).__name__} is not a JSON value: pass str, int, float, bool, "
        "None, lists, dicts, datetime, date, time, UUID or Decimal"
    )
