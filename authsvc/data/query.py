"""Plain descriptions of data requests, independent of protobuf and SQL.

The servicer builds these from proto messages; the compiler turns them into
SQL. Identifiers here are still untrusted: the compiler checks every one
against the schema cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPERATORS = frozenset(
    {
        "eq",
        "neq",
        "gt",
        "gte",
        "lt",
        "lte",
        "like",
        "ilike",
        "in",
        "is",
        "contains",
        "contained_by",
    }
)


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value_json: str
    negate: bool = False


@dataclass(frozen=True)
class Group:
    """All (`any_=False`) or any (`any_=True`) of `items` must hold."""

    items: tuple[Filter, ...]
    any_: bool = False
    negate: bool = False


Filter = Condition | Group


@dataclass(frozen=True)
class Order:
    column: str
    descending: bool = False
    nulls: str | None = None  # "first", "last" or None (Postgres' default)


@dataclass(frozen=True)
class Target:
    schema: str
    table: str


@dataclass(frozen=True)
class Select:
    target: Target
    columns: tuple[str, ...] = ()
    filter: Filter | None = None
    order: tuple[Order, ...] = ()
    limit: int = 0
    offset: int = 0
    count: bool = False


@dataclass(frozen=True)
class Insert:
    target: Target
    rows_json: str
    returning: tuple[str, ...] = ()
    on_conflict: tuple[str, ...] | None = None  # set for upserts
    ignore_duplicates: bool = False


@dataclass(frozen=True)
class Update:
    target: Target
    values_json: str
    filter: Filter | None = None
    all_rows: bool = False
    returning: tuple[str, ...] = ()
    require_affected: bool = False
    max_affected: int = 0


@dataclass(frozen=True)
class Delete:
    target: Target
    filter: Filter | None = None
    all_rows: bool = False
    returning: tuple[str, ...] = ()
    require_affected: bool = False
    max_affected: int = 0


@dataclass(frozen=True)
class Call:
    schema: str
    function: str
    args_json: str


@dataclass(frozen=True)
class Statement:
    """Compiled SQL with its bound parameters, and how to read its result."""

    sql: str
    params: tuple[object, ...]
    kind: str  # "rows" (rows_json, affected[, truncated][, count]) or "call"
    require_affected: bool = False
    max_affected: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    # Run in a READ ONLY transaction: nothing it calls may write.
    read_only: bool = False
