"""Request → SQL. Identifiers are checked against the schema cache and quoted
in the catalog's spelling; every value is a bound parameter.

Values travel as JSON text bound as `jsonb`; Postgres converts them to each
column's type (`($n::jsonb #>> '{}')::type`), so numbers keep their exact
value whether the client sent a JSON number or a JSON string. The type is
spelled without its modifier (see `schema`), so a value is never cut or
rounded to the column's length or scale on the way. Results are
built by Postgres with `json_agg`, so no row is converted in Python.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

from authsvc.data.limits import Limits, check_filter, exceeded
from authsvc.data.query import (
    OPERATORS,
    Call,
    Condition,
    Delete,
    Filter,
    Group,
    Insert,
    Select,
    Statement,
    Target,
    Update,
)
from authsvc.data.schema import Column, SchemaCache, Table, quote_ident
from authsvc.errors import InvalidArgument, Reason

Q = TypeVar("Q")

MAX_SHOWN_NAME_CHARS = 64
# Well under the 32,767 bound parameters the Postgres protocol allows.
MAX_BOUND_VALUES = 1000
MAX_ORDER_COLUMNS = 32
_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_IS_VALUES = {None: "NULL", True: "TRUE", False: "FALSE"}
_ROWS = '"authsvc_rows"'
_NUMBERED = '"authsvc_numbered"'


class Compiler:
    """Compiles data requests for one schema cache and row cap."""

    def __init__(
        self,
        schema: SchemaCache,
        *,
        max_rows: int,
        max_result_bytes: int,
        limits: Limits,
    ) -> None:
        self._schema = schema
        self._limits = limits
        self.max_rows = max_rows
        self.max_result_bytes = max_result_bytes

    async def select(self, query: Select) -> Statement:
        return await self._fresh(self._select, query)

    async def insert(self, query: Insert) -> Statement:
        return await self._fresh(self._insert, query)

    async def update(self, query: Update) -> Statement:
        return await self._fresh(self._update, query)

    async def delete(self, query: Delete) -> Statement:
        return await self._fresh(self._delete, query)

    async def call(self, query: Call) -> Statement:
        return await self._fresh(self._call, query)

    async def _fresh(
        self, build: Callable[[Q], Awaitable[Statement]], query: Q
    ) -> Statement:
        """Compile; if a column or function is unknown, reread the catalog
        (when the refresh interval allows) and compile once more."""
        try:
            return await build(query)
        except InvalidArgument as exc:
            retry = exc.reason in (Reason.UNKNOWN_COLUMN, Reason.UNKNOWN_FUNCTION)
            if not retry or not await self._schema.refresh_if_due():
                raise
        return await build(query)

    async def _select(self, query: Select) -> Statement:
        table = await self._table(query.target)
        params = _Params()
        columns = self._column_list(table, query.columns, default_all=True)
        where = self._where(table, query.filter, params)
        order = self._order(table, query)
        if query.limit < 0 or query.offset < 0:
            raise _bad_request("limit and offset must not be negative")
        if len(query.order) > MAX_ORDER_COLUMNS:
            raise _bad_request(f"order by at most {MAX_ORDER_COLUMNS} columns")

        # Only the server's row cap "truncates"; a client's own limit does not.
        # (Even a filter on the whole primary key is capped: a table that
        # others INHERIT from shows their rows too, keys repeated, and the
        # cached catalog may be older than the table's key.)
        capped = not query.limit or query.limit > self.max_rows
        cap = self.max_rows if capped else query.limit
        limit = params.add(cap + 1 if capped else cap)
        offset = params.add(query.offset)
        rows = (
            f"SELECT {columns} FROM {table.sql}{where}{order} "
            f"LIMIT {limit} OFFSET {offset}"
        )
        # One aggregate over the rows, without CTEs: Postgres plans each
        # nested level anew on every call (no prepared statements behind a
        # transaction pooler), and this form costs it about a third less
        # than three CTEs. Capped, one row more than the cap is fetched to
        # tell a truncated result, numbered so that it stays out of the JSON.
        # `alias.*` is the whole row even when a column has the alias's name.
        if capped:
            source = (
                f"(SELECT to_json({_ROWS}.*) AS row, row_number() OVER () AS n "
                f"FROM ({rows}) AS {_ROWS}) AS {_NUMBERED}"
            )
            aggregate = (
                f"json_agg({_NUMBERED}.row) "
                f"FILTER (WHERE {_NUMBERED}.n <= {params.add(cap)})"
            )
        else:
            source = f"({rows}) AS {_ROWS}"
            aggregate = f"json_agg({_ROWS}.*)"
        count_sql = (
            f", (SELECT count(*) FROM {table.sql}{where}) AS total"
            if query.count
            else ""
        )
        result = (
            f"SELECT coalesce({aggregate}, '[]')::text AS rows_json, "
            f"count(*) AS fetched{count_sql} FROM {source}"
        )
        others = ("fetched", "total") if query.count else ("fetched",)
        return Statement(
            self._size_checked(result, others, params),
            params.values,
            "rows",
            extra={"cap": cap, "capped": capped},
            read_only=True,
        )

    async def _insert(self, query: Insert) -> Statement:
        table = await self._table(query.target)
        params = _Params()
        rows_text, names, count = _rows(query.rows_json)
        if count > self._limits.max_insert_rows:
            raise exceeded(
                "max_insert_rows",
                self._limits.max_insert_rows,
                f"the request inserts {count} rows",
            )
        columns = [self._column(table, name) for name in names]
        listed = ", ".join(quote_ident(c.name) for c in columns)
        source = (
            f"SELECT {listed} FROM jsonb_populate_recordset(NULL::{table.sql}, "
            f"{params.add(rows_text)}::jsonb)"
        )
        conflict = ""
        if query.on_conflict is not None:
            conflict = self._on_conflict(table, query, columns)
        body = f"INSERT INTO {table.sql} ({listed}) {source}{conflict}"
        return self._write(table, body, query.returning, params, require_affected=False)

    async def _update(self, query: Update) -> Statement:
        table = await self._table(query.target)
        params = _Params()
        values = _json(query.values_json, "values_json")
        if not isinstance(values, dict) or not values:
            raise _bad_request("values_json must be a non-empty JSON object")
        columns = [self._column(table, name) for name in values]
        listed = ", ".join(quote_ident(c.name) for c in columns)
        values_param = params.add(query.values_json)
        where = self._guarded_where(table, query.filter, query.all_rows, params)
        body = (
            f"UPDATE {table.sql} SET ({listed}) = (SELECT {listed} FROM "
            f"jsonb_populate_record(NULL::{table.sql}, {values_param}::jsonb)){where}"
        )
        return self._write(
            table,
            body,
            query.returning,
            params,
            require_affected=query.require_affected,
            max_affected=query.max_affected,
        )

    async def _delete(self, query: Delete) -> Statement:
        table = await self._table(query.target)
        params = _Params()
        where = self._guarded_where(table, query.filter, query.all_rows, params)
        body = f"DELETE FROM {table.sql}{where}"
        return self._write(
            table,
            body,
            query.returning,
            params,
            require_affected=query.require_affected,
            max_affected=query.max_affected,
        )

    async def _call(self, query: Call) -> Statement:
        schema = self._exposed_schema(query.schema, Reason.UNKNOWN_FUNCTION)
        args = _json(query.args_json or "{}", "args_json")
        if not isinstance(args, dict):
            raise _bad_request("args_json must be a JSON object")
        candidates = [
            f
            for f in await self._schema.functions(schema, query.function)
            if f.required <= args.keys() <= f.args.keys()
        ]
        if not candidates:
            raise InvalidArgument(
                Reason.UNKNOWN_FUNCTION,
                f"no function {_shown(schema)}.{_shown(query.function)} takes the "
                "arguments " + (", ".join(sorted(_shown(a) for a in args)) or "(none)"),
                {"function": _plain(query.function)},
            )
        if len(candidates) > 1:
            raise _bad_request(
                f"several overloads of {_shown(query.function)} take these arguments"
            )
        function = candidates[0]
        params = _Params()
        # Each argument is picked out of the one jsonb parameter by Postgres,
        # so its JSON text (and a number's exact value) is never re-encoded.
        args_param = params.add(query.args_json) if args else ""
        arguments = ", ".join(
            f"{quote_ident(name)} => "
            + _convert(
                f"({args_param}::jsonb -> {params.add(name)}::text)",
                _type_kind(function.args[name]),
                function.args[name],
            )
            for name in args
        )
        call = f"{function.sql}({arguments})"
        if function.returns_type_sql == "void":
            sql = f"SELECT {call}, 'null'"
            return Statement(
                sql,
                params.values,
                "call",
                extra={"void": True, "volatile": function.volatile},
                read_only=not function.volatile,
            )
        if function.returns_set:
            result = (
                f"SELECT coalesce(json_agg(r.*), '[]')::text AS rows_json "
                f"FROM {call} AS r"
            )
        else:
            result = f"SELECT to_json({call})::text AS rows_json"
        sql = self._size_guarded("", result, (), params)
        return Statement(
            sql,
            params.values,
            "call",
            extra={"volatile": function.volatile},
            read_only=not function.volatile,
        )

    def _write(
        self,
        table: Table,
        body: str,
        returning: tuple[str, ...],
        params: _Params,
        *,
        require_affected: bool,
        max_affected: int = 0,
    ) -> Statement:
        if max_affected < 0:
            raise _bad_request("max_affected must not be negative")
        # The server's cap applies to every write; a request may only lower it.
        cap = self._limits.max_affected
        max_affected = min(max_affected, cap) if max_affected else cap
        if returning:
            columns = self._column_list(table, returning, default_all=False)
            # A data-modifying WITH must stay at the top level.
            sql = self._size_guarded(
                f"WITH {_ROWS} AS ({body} RETURNING {columns})",
                f"SELECT coalesce(json_agg({_ROWS}.*), '[]')::text AS rows_json, "
                f"count(*) AS fetched FROM {_ROWS}",
                ("fetched",),
                params,
            )
        else:
            sql = (
                f"WITH {_ROWS} AS ({body} RETURNING 1) "
                f"SELECT '[]' AS rows_json, count(*) AS fetched FROM {_ROWS}"
            )
        return Statement(
            sql,
            params.values,
            "rows",
            require_affected=require_affected,
            max_affected=max_affected,
        )

    def _size_checked(
        self, result: str, others: tuple[str, ...], params: _Params
    ) -> str:
        """`_measured` over a one-row `result` with an aggregate, which
        Postgres runs once however often its columns are read."""
        return self._measured(f"({result})", others, params)

    def _size_guarded(
        self, ctes: str, result: str, others: tuple[str, ...], params: _Params
    ) -> str:
        """`_measured` over any one-row `result`, MATERIALIZED: inlined, the
        JSON (and any function it calls) would be computed for each read."""
        with_clause = f"{ctes}, " if ctes else "WITH "
        measured = self._measured('"authsvc_out"', others, params)
        return f'{with_clause}"authsvc_out" AS MATERIALIZED ({result}) {measured}'

    def _measured(self, source: str, others: tuple[str, ...], params: _Params) -> str:
        """Measure the JSON in Postgres; an oversized result is never sent."""
        limit = params.add(self.max_result_bytes)
        rest = "".join(f", o.{name}" for name in others)
        return (
            f"SELECT CASE WHEN octet_length(o.rows_json) > {limit} THEN NULL "
            f"ELSE o.rows_json END AS rows_json, octet_length(o.rows_json) AS size"
            f"{rest} FROM {source} AS o"
        )

    def _on_conflict(self, table: Table, query: Insert, inserted: list[Column]) -> str:
        keys = query.on_conflict or table.primary_key
        if not keys:
            raise _bad_request(
                f"table {_shown(table.name)} has no primary key: name on_conflict columns"
            )
        conflict = ", ".join(quote_ident(self._column(table, k).name) for k in keys)
        updates = [c for c in inserted if c.name not in keys]
        if query.ignore_duplicates or not updates:
            return f" ON CONFLICT ({conflict}) DO NOTHING"
        assignments = ", ".join(
            f"{quote_ident(c.name)} = EXCLUDED.{quote_ident(c.name)}" for c in updates
        )
        return f" ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"

    async def _table(self, target: Target) -> Table:
        schema = self._exposed_schema(target.schema)
        table = await self._schema.table(schema, target.table)
        if table is None:
            raise InvalidArgument(
                Reason.UNKNOWN_TABLE,
                f"no table or view {_shown(schema)}.{_shown(target.table)}",
                {"table": _plain(target.table)},
            )
        return table

    def _exposed_schema(
        self, schema: str, reason: Reason = Reason.UNKNOWN_TABLE
    ) -> str:
        schema = schema or "public"
        if schema not in self._schema.schemas:
            raise InvalidArgument(
                reason,
                f"schema {_shown(schema)} is not exposed; exposed: "
                + ", ".join(self._schema.schemas),
                {"schema": _plain(schema)},
            )
        return schema

    def _column(self, table: Table, name: str) -> Column:
        column = table.columns.get(name)
        if column is None:
            raise InvalidArgument(
                Reason.UNKNOWN_COLUMN,
                f"table {_shown(table.name)} has no column {_shown(name)}",
                {"column": _plain(name)},
            )
        return column

    def _column_list(
        self, table: Table, names: tuple[str, ...], *, default_all: bool
    ) -> str:
        if default_all and names in ((), ("*",)):
            names = tuple(table.columns)
        if len(set(names)) != len(names):
            raise _bad_request("a column is listed twice")
        return ", ".join(quote_ident(self._column(table, n).name) for n in names)

    def _order(self, table: Table, query: Select) -> str:
        if not query.order:
            return ""
        parts = []
        for item in query.order:
            column = quote_ident(self._column(table, item.column).name)
            direction = " DESC" if item.descending else " ASC"
            nulls = {None: "", "first": " NULLS FIRST", "last": " NULLS LAST"}[
                item.nulls
            ]
            parts.append(column + direction + nulls)
        return " ORDER BY " + ", ".join(parts)

    def _guarded_where(
        self, table: Table, filter_: Filter | None, all_rows: bool, params: _Params
    ) -> str:
        if filter_ is None and not all_rows:
            raise InvalidArgument(
                Reason.UNFILTERED_WRITE,
                "no filter: set all_rows to change every row of the table",
            )
        return self._where(table, filter_, params)

    def _where(self, table: Table, filter_: Filter | None, params: _Params) -> str:
        if filter_ is None:
            return ""
        check_filter(filter_, self._limits)
        return " WHERE " + self._predicate(table, filter_, params)

    def _predicate(self, table: Table, node: Filter, params: _Params) -> str:
        if isinstance(node, Group):
            if not node.items:
                raise InvalidArgument(Reason.BAD_FILTER, "a filter group is empty")
            joiner = " OR " if node.any_ else " AND "
            sql = (
                "("
                + joiner.join(self._predicate(table, n, params) for n in node.items)
                + ")"
            )
        else:
            sql = self._condition(table, node, params)
        return f"NOT {sql}" if node.negate else sql

    def _condition(self, table: Table, condition: Condition, params: _Params) -> str:
        column = self._column(table, condition.column)
        name = quote_ident(column.name)
        op = condition.op
        if op not in OPERATORS:
            raise InvalidArgument(Reason.BAD_FILTER, "unknown operator")
        value = _json(condition.value_json, f"the value for {_shown(column.name)}")

        if op == "is":
            if not (value is None or isinstance(value, bool)):
                raise _bad_filter(column, "IS takes null, true or false")
            return f"({name} IS {_IS_VALUES[value]})"
        if op in _COMPARISONS:
            if value is None:
                raise _bad_filter(column, "compare with null using IS, not EQ/NEQ")
            if column.kind == "json":
                raise _bad_filter(column, "json columns cannot be compared; use jsonb")
            converted = _convert(
                f"{params.add(condition.value_json)}::jsonb",
                column.kind,
                column.type_sql,
            )
            return f"({name} {_COMPARISONS[op]} {converted})"
        if op in ("like", "ilike"):
            if column.kind != "text" or not isinstance(value, str):
                raise _bad_filter(
                    column, f"{op.upper()} needs a text column and a string"
                )
            keyword = "LIKE" if op == "like" else "ILIKE"
            return f"({name} {keyword} ({params.add(condition.value_json)}::jsonb #>> '{{}}'))"
        if op == "in":
            if not isinstance(value, list) or column.kind in ("array", "json", "jsonb"):
                raise _bad_filter(column, "IN needs a JSON array and a plain column")
            if len(value) > self._limits.max_in_list:
                raise exceeded(
                    "max_in_list",
                    self._limits.max_in_list,
                    f"the IN list for {_shown(column.name)} has {len(value)} items",
                )
            elements = f"ARRAY(SELECT jsonb_array_elements_text({params.add(condition.value_json)}::jsonb))"
            return f"({name} = ANY({elements}::{column.type_sql}[]))"
        # contains / contained_by
        symbol = "@>" if op == "contains" else "<@"
        if column.kind in ("json", "jsonb"):
            left = f"{name}::jsonb" if column.kind == "json" else name
            return f"({left} {symbol} {params.add(condition.value_json)}::jsonb)"
        if column.kind == "array":
            converted = _convert(
                f"{params.add(condition.value_json)}::jsonb", "array", column.type_sql
            )
            return f"({name} {symbol} {converted})"
        raise _bad_filter(column, f"{op.upper()} needs a jsonb or array column")


class _Params:
    """Collects bound parameters and hands out their placeholders."""

    def __init__(self) -> None:
        self._values: list[object] = []

    def add(self, value: object) -> str:
        if len(self._values) >= MAX_BOUND_VALUES:
            raise InvalidArgument(
                Reason.BAD_FILTER,
                f"the request needs more than {MAX_BOUND_VALUES} values; "
                "use IN with a list instead of many conditions",
            )
        self._values.append(value)
        return f"${len(self._values)}"

    @property
    def values(self) -> tuple[object, ...]:
        return tuple(self._values)


def _convert(jsonb: str, kind: str, type_sql: str) -> str:
    """SQL turning a jsonb expression into a value of the column's type."""
    if kind == "jsonb":
        return jsonb
    if kind == "json":
        return f"{jsonb}::json"
    if kind == "array":
        return f"ARRAY(SELECT jsonb_array_elements_text({jsonb}))::{type_sql}"
    return f"({jsonb} #>> '{{}}')::{type_sql}"


def _type_kind(type_sql: str) -> str:
    if type_sql in ("json", "jsonb"):
        return type_sql
    if type_sql.endswith("[]"):
        return "array"
    return "scalar"


def _json(text: str, what: str) -> Any:
    # Numbers are only checked here; Postgres converts them. Decimal also takes
    # integers past the 4,300 digits `int` refuses, which numeric columns hold.
    try:
        return json.loads(
            text,
            parse_int=Decimal,
            parse_float=Decimal,
            parse_constant=_refuse,
            object_pairs_hook=_without_duplicates,
        )
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(
            Reason.BAD_VALUE,
            f'{what} is not valid JSON: send JSON text, e.g. "42" or "\\"text\\""',
        ) from exc


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _rows(rows_json: str) -> tuple[str, list[str], int]:
    """The rows as a JSON array text, the union of their keys in order, and
    how many rows there are."""
    rows = _json(rows_json, "rows_json")
    if isinstance(rows, dict):
        rows, rows_json = [rows], f"[{rows_json}]"
    if (
        not isinstance(rows, list)
        or not rows
        or not all(isinstance(r, dict) for r in rows)
    ):
        raise _bad_request(
            "rows_json must be a JSON object or a non-empty array of objects"
        )
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    if not names:
        raise _bad_request("rows_json rows have no columns")
    return rows_json, list(names), len(rows)


def _bad_request(message: str) -> InvalidArgument:
    return InvalidArgument(Reason.BAD_REQUEST, message)


def _bad_filter(column: Column, message: str) -> InvalidArgument:
    return InvalidArgument(
        Reason.BAD_FILTER,
        f"filter on {_shown(column.name)}: {message}",
        {"column": _plain(column.name)},
    )


def _plain(name: str) -> str:
    """A request-supplied name for metadata: printable and short, unquoted."""
    shown = "".join(
        ch if ch.isprintable() else "?" for ch in name[: MAX_SHOWN_NAME_CHARS + 1]
    )
    if len(shown) > MAX_SHOWN_NAME_CHARS:
        shown = shown[:MAX_SHOWN_NAME_CHARS] + "…"
    return shown


def _shown(name: str) -> str:
    """A request-supplied name, safe to put in a message, quoted."""
    return '"' + _plain(name) + '"'
