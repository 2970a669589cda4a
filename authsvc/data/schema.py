"""The schema cache: what tables, columns and functions really exist.

Every identifier in a request is checked against this cache before any SQL is
built, and the SQL uses the catalog's own spelling, quoted. The cache is read
from the catalog at start-up and again when a request names something unknown
(at most once per refresh interval), so a migration needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from authsvc.data.errors import CONNECTION_ERRORS, translate

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_INTERVAL_SECONDS = 5.0


class Catalog(Protocol):
    """Runs a catalog query (the pool's connection wrapper provides it)."""

    async def fetch(self, query: str, *args: Any) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_sql: str
    # "json", "jsonb", "array", "text" (LIKE works) or "scalar".
    kind: str
    element_type_sql: str | None = None


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@dataclass(frozen=True, slots=True)
class Function:
    schema: str
    name: str
    # Input arguments in order: name -> type.
    args: dict[str, str]
    required: frozenset[str]
    returns_set: bool
    returns_type_sql: str
    # VOLATILE (may write); STABLE and IMMUTABLE functions cannot.
    volatile: bool = True

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


@dataclass
class Snapshot:
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    functions: dict[tuple[str, str], list[Function]] = field(default_factory=dict)


# A column's type_sql is what filter values are cast to: the type without
# its modifier (a length, a precision), since an explicit cast to
# varchar(3) or numeric(5,2) cuts or rounds the value, and 'abcdef' would
# then match 'abc'. A typmod of -1 (rather than NULL) spells bpchar and
# "bit" as such, not as character and bit, which mean char(1) and bit(1).
# A domain's values are cast to its base type, for the same reason.
_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname,
       format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                   -1) AS type_sql,
       t.typname, t.typcategory::text AS typcategory,
       CASE WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END AS elem_sql,
       coalesce(a.attnum = ANY(pk.conkey), false) AS in_pk,
       array_position(pk.conkey, a.attnum) AS pk_position
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
ORDER BY n.nspname, c.relname, a.attnum
"""

_FUNCTIONS_SQL = """
SELECT n.nspname, p.proname, p.proretset, p.provolatile = 'v' AS volatile,
       format_type(p.prorettype, -1) AS returns_sql,
       p.pronargs, p.pronargdefaults,
       coalesce(p.proargnames, '{}') AS argnames,
       coalesce(p.proargmodes::text[], '{}') AS argmodes,
       ARRAY(SELECT format_type(x, -1) FROM unnest(p.proargtypes) AS x) AS argtypes
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY($1::text[]) AND p.prokind = 'f'
"""


class SchemaCache:
    """Tables and functions of the exposed schemas, refreshed on demand."""

    def __init__(
        self,
        catalog: Callable[[], Any],
        schemas: tuple[str, ...],
        *,
        refresh_interval_seconds: float = DEFAULT_REFRESH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schemas = schemas
        self._catalog = catalog
        self._interval = refresh_interval_seconds
        self._clock = clock
        self._snapshot = Snapshot()
        self._loaded_at: float | None = None
        self._stale = False
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    async def table(self, schema: str, name: str) -> Table | None:
        if self._stale:
            await self.refresh_if_due()
        found = self._snapshot.tables.get((schema, name))
        if found is None and await self.refresh_if_due():
            found = self._snapshot.tables.get((schema, name))
        return found

    async def functions(self, schema: str, name: str) -> list[Function]:
        if self._stale:
            await self.refresh_if_due()
        found = self._snapshot.functions.get((schema, name), [])
        if not found and await self.refresh_if_due():
            found = self._snapshot.functions.get((schema, name), [])
        return found

    def mark_stale(self) -> None:
        """Postgres named an object the cache believes in: reread soon."""
        self._stale = True

    async def refresh(self) -> tuple[int, int]:
        """Read the catalog now; return the numbers of tables and functions."""
        async with self._lock:
            await self._load()
        return self.counts

    @property
    def counts(self) -> tuple[int, int]:
        snapshot = self._snapshot
        functions = sum(len(f) for f in snapshot.functions.values())
        return len(snapshot.tables), functions

    async def refresh_if_due(self) -> bool:
        """Refresh unless one happened within the interval; True if it ran."""
        async with self._lock:
            if self._loaded_at is not None and (
                self._clock() - self._loaded_at < self._interval
            ):
                return False
            await self._load()
            return True

    async def _load(self) -> None:
        try:
            async with self._catalog() as connection:
                column_rows = await connection.fetch(_COLUMNS_SQL, list(self.schemas))
                function_rows = await connection.fetch(
                    _FUNCTIONS_SQL, list(self.schemas)
                )
        except (asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
            raise translate(exc, admin=False) from exc
        snapshot = Snapshot(
            tables=_tables(column_rows), functions=_functions(function_rows)
        )
        self._snapshot = snapshot
        self._loaded_at = self._clock()
        self._stale = False
        logger.info(
            "schema loaded schemas=%s tables=%d functions=%d",
            ",".join(self.schemas),
            len(snapshot.tables),
            sum(len(f) for f in snapshot.functions.values()),
        )


def _column_kind(typname: str, category: str) -> str:
    if typname in ("json", "jsonb"):
        return typname
    if category == "A":
        return "array"
    if category == "S":
        return "text"
    return "scalar"


def _tables(rows: Sequence[Any]) -> dict[tuple[str, str], Table]:
    columns: dict[tuple[str, str], dict[str, Column]] = {}
    keys: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for row in rows:
        ident = (row["nspname"], row["relname"])
        columns.setdefault(ident, {})[row["attname"]] = Column(
            name=row["attname"],
            type_sql=row["type_sql"],
            kind=_column_kind(row["typname"], row["typcategory"]),
            element_type_sql=row["elem_sql"],
        )
        if row["in_pk"]:
            keys.setdefault(ident, []).append((row["pk_position"], row["attname"]))
    return {
        ident: Table(
            schema=ident[0],
            name=ident[1],
            columns=cols,
            primary_key=tuple(name for _, name in sorted(keys.get(ident, []))),
        )
        for ident, cols in columns.items()
    }


def _functions(rows: Sequence[Any]) -> dict[tuple[str, str], list[Function]]:
    functions: dict[tuple[str, str], list[Function]] = {}
    for row in rows:
        names = list(row["argnames"])
        modes = list(row["argmodes"])
        if modes:
            names = [
                n for n, m in zip(names, modes, strict=False) if m in ("i", "b", "v")
            ]
        types = list(row["argtypes"])
        if len(names) != len(types) or not all(names):
            continue  # unnamed arguments cannot be called by name
        optional = row["pronargdefaults"]
        required = frozenset(names[: len(names) - optional])
        functions.setdefault((row["nspname"], row["proname"]), []).append(
            Function(
                schema=row["nspname"],
                name=row["proname"],
                args=dict(zip(names, types, strict=True)),
                required=required,
                returns_set=row["proretset"],
                returns_type_sql=row["returns_sql"],
                volatile=row["volatile"],
            )
        )
    return functions


def quote_ident(name: str) -> str:
    """Quote an identifier that came from the catalog."""
    return '"' + name.replace('"', '""') + '"'
