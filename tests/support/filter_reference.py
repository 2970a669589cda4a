"""What Postgres answers to a DataService filter, computed in Python.

A reference for property tests of filters, written from Postgres' documented
behaviour (and its source where the documentation is silent), never from
authsvc/data/compiler.py:

- SQL's three-valued logic for NOT, AND, OR; a row is kept only when the
  filter is TRUE. IS NULL/TRUE/FALSE is never unknown; `= ANY` is unknown when
  nothing matched and a list element is NULL, and FALSE for an empty list.
- Values are JSON text that reaches the column's type as `value #>> '{}'`:
  a string as itself, a number as jsonb writes it (`1E2` → `100`, `2.50`
  keeps its scale), anything else as jsonb's text.
- The input rules of Postgres 15's int4, float8 (strtod's syntax), boolean and
  text for that text, and float8's order (NaN equals NaN, above all else).
- LIKE as Postgres' matcher runs it, backslash escapes included; ILIKE folds
  ASCII letters only, as under the "C" collation.

A value that does not convert fails wherever Postgres evaluates it, which may
be nowhere (a false AND, a plan that never reaches it). So per row the
reference gives every value the filter could take: one value when the row's
fate does not depend on a failing condition, several when it does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Cond:
    column: str
    op: str  # eq … contained_by as in data.proto, lower case, or "unspecified"
    value_json: str
    negate: bool = False


@dataclass(frozen=True)
class Group:
    any_: bool
    items: tuple[Node, ...]
    negate: bool = False


@dataclass(frozen=True)
class Blank:
    """A Filter message with no kind set."""

    negate: bool = False


Node = Cond | Group | Blank
Truth = bool | None  # None is SQL's unknown
ANY_TRUTH: frozenset[Truth] = frozenset({True, False, None})

COMPARISONS: dict[str, Callable[[int], bool]] = {
    "eq": lambda order: order == 0,
    "neq": lambda order: order != 0,
    "gt": lambda order: order > 0,
    "gte": lambda order: order >= 0,
    "lt": lambda order: order < 0,
    "lte": lambda order: order <= 0,
}


@dataclass(frozen=True)
class Table:
    # Column name → "int" (int4), "float" (float8), "bool" or "text" ("C").
    kinds: Mapping[str, str]
    # Each row maps every column to its value; "id" identifies it.
    rows: tuple[Mapping[str, Any], ...]
    max_conditions: int
    max_filter_depth: int


@dataclass(frozen=True)
class Expected:
    # Reasons one of which must come back; empty when the statement can run.
    refusals: frozenset[str]
    # Some condition fails where Postgres evaluates it (DATA_ERROR allowed).
    may_fail: bool = False
    # Per row id, every value the filter can take.
    truths: tuple[tuple[int, frozenset[Truth]], ...] = ()

    @property
    def kept(self) -> tuple[int, ...]:
        """The rows kept whether or not a failing condition is evaluated."""
        return tuple(id_ for id_, values in self.truths if values == {True})

    @property
    def undecided(self) -> tuple[int, ...]:
        """The rows kept or not depending on a failing condition's value."""
        return tuple(
            id_ for id_, values in self.truths if True in values and len(values) > 1
        )


class _Fails(Exception):
    """Postgres raises a data error (class 22) evaluating this."""


def expected(tree: Node | None, table: Table) -> Expected:
    if tree is None:
        every = frozenset({True})
        return Expected(frozenset(), truths=tuple((r["id"], every) for r in table.rows))
    conditions = [n for n in _nodes(tree) if isinstance(n, Cond)]

    # authsvc refuses the request before any SQL runs.
    refusals = {r for n in _nodes(tree) if (r := _refusal(n, table)) is not None}
    too_big = len(conditions) > table.max_conditions
    if too_big or _depth(tree) > table.max_filter_depth:
        refusals.add("LIMIT_EXCEEDED")
    if refusals:
        return Expected(frozenset(refusals))
    # IS TRUE/FALSE needs a boolean: Postgres' parser says so (BAD_REQUEST),
    # unless authsvc checks it first (BAD_FILTER).
    if any(
        c.op == "is" and c.value_json != "null" and table.kinds[c.column] != "bool"
        for c in conditions
    ):
        return Expected(frozenset({"BAD_REQUEST", "BAD_FILTER"}))
    # Every value is bound as a jsonb parameter, even one never evaluated.
    if any(c.op != "is" and _jsonb_refuses(_loads(c.value_json)) for c in conditions):
        return Expected(frozenset({"DATA_ERROR"}))

    failing: list[Cond] = []
    truths = tuple(
        (row["id"], _truths(tree, row, table, failing)) for row in table.rows
    )
    return Expected(frozenset(), bool(failing), truths)


def _nodes(node: Node) -> list[Node]:
    if isinstance(node, Group):
        return [node, *(n for item in node.items for n in _nodes(item))]
    return [node]


def _depth(node: Node) -> int:
    if isinstance(node, Group):
        return 1 + max(map(_depth, node.items), default=0)
    return 0


def _refusal(node: Node, table: Table) -> str | None:
    """data.proto's reason for refusing this node, if any."""
    if isinstance(node, Blank):
        return "BAD_FILTER"
    if isinstance(node, Group):
        return None if node.items else "BAD_FILTER"
    if node.op == "unspecified":
        return "BAD_FILTER"
    if node.column not in table.kinds:
        return "UNKNOWN_COLUMN"
    try:
        value = _loads(node.value_json, strict=True)
    except ValueError:
        return "BAD_VALUE"
    text = table.kinds[node.column] == "text"
    fits = {
        "is": value is None or isinstance(value, bool),
        "like": text and isinstance(value, str),
        "ilike": text and isinstance(value, str),
        "in": isinstance(value, list),
        "contains": False,  # jsonb and array columns only
        "contained_by": False,
    }.get(node.op, value is not None)  # a comparison with null: use IS
    return None if fits else "BAD_FILTER"


def _loads(text: str, *, strict: bool = False) -> Any:
    """JSON with every number a Decimal, as jsonb keeps it; `strict` refuses
    what authsvc refuses (NaN, Infinity, a key twice)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if strict and len(dict(items)) != len(items):
            raise ValueError("a key appears twice")
        return dict(items)

    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(
        text,
        parse_float=Decimal,
        parse_int=Decimal,
        parse_constant=refuse,
        object_pairs_hook=pairs,
    )


def _jsonb_refuses(value: Any) -> bool:
    """jsonb holds no NUL character and no unpaired surrogate."""
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(_jsonb_refuses(v) for v in value)
    if isinstance(value, dict):
        return any(_jsonb_refuses(k) or _jsonb_refuses(v) for k, v in value.items())
    return False


# Three-valued logic, lifted to sets for conditions that fail.


def _truths(
    node: Node, row: Mapping[str, Any], table: Table, failing: list[Cond]
) -> frozenset[Truth]:
    if isinstance(node, Cond):
        try:
            values = frozenset({_condition(node, row, table)})
        except _Fails:
            failing.append(node)
            values = ANY_TRUTH
    else:
        assert isinstance(node, Group)
        join = _or if node.any_ else _and
        values = frozenset({not node.any_})
        for item in node.items:
            child = _truths(item, row, table, failing)
            values = frozenset(join(a, b) for a in values for b in child)
    return frozenset(_not(v) for v in values) if node.negate else values


def _and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: Truth, b: Truth) -> Truth:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _not(a: Truth) -> Truth:
    return None if a is None else not a


def _condition(cond: Cond, row: Mapping[str, Any], table: Table) -> Truth:
    kind = table.kinds[cond.column]
    cell = row[cond.column]
    value = _loads(cond.value_json)

    if cond.op == "is":
        return cell is value
    if cond.op in ("like", "ilike"):
        if cell is None:
            return None
        if cond.op == "ilike":
            return _match(_ascii_lower(cell), _ascii_lower(value)) is True
        return _match(cell, value) is True
    if cond.op == "in":
        # The list is converted (or fails) whatever the row holds.
        elements = [None if e is None else _input(kind, _text(e)) for e in value]
        if not elements:
            return False
        if cell is None:
            return None
        if any(_order(kind, cell, e) == 0 for e in elements if e is not None):
            return True
        return None if None in elements else False
    operand = _input(kind, _text(value))
    return None if cell is None else COMPARISONS[cond.op](_order(kind, cell, operand))


def _order(kind: str, a: Any, b: Any) -> int:
    if kind == "float" and (math.isnan(a) or math.isnan(b)):
        return int(math.isnan(a)) - int(math.isnan(b))
    return int(a > b) - int(a < b)


# JSON to text, as jsonb writes it.


def _text(value: Any) -> str:
    """`value #>> '{}'` for a value that is not null."""
    return value if isinstance(value, str) else _jsonb_out(value)


def _jsonb_out(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        # numeric's output: plain notation, the input's scale, no negative zero.
        return format(value.copy_abs() if value.is_zero() else value, "f")
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_jsonb_out, value)) + "]"
    # jsonb orders keys by length, then bytes.
    keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
    pairs = (f"{_json_string(k)}: {_jsonb_out(value[k])}" for k in keys)
    return "{" + ", ".join(pairs) + "}"


_JSON_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_ESCAPES |= {'"': '\\"', "\\": "\\\\"}


def _json_string(text: str) -> str:
    escaped = (_JSON_ESCAPES.get(c, f"\\u{ord(c):04x}" if c < " " else c) for c in text)
    return '"' + "".join(escaped) + '"'


# The types' input functions.

_PG_SPACE = " \t\n\r\v\f"
_INT4 = re.compile(r"[+-]?[0-9]+")
_DECIMAL_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|infinity|nan(?:\([0-9A-Za-z_]*\))?)", re.I)
_BOOL_WORDS = {"true": True, "yes": True, "false": False, "no": False}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _input(kind: str, text: str) -> Any:
    """The column type's input function (Postgres 15) on `text`."""
    if kind == "text":
        return text
    body = text.strip(_PG_SPACE)
    if kind == "int":
        if not _INT4.fullmatch(body) or not -(2**31) <= int(body) < 2**31:
            raise _Fails
        return int(body)
    if kind == "bool":
        return _boolean(_ascii_lower(body))
    return _float8(body)


def _boolean(word: str) -> bool:
    """A prefix of true, yes, false or no; on, of(f); 1 or 0."""
    if word in ("1", "0", "on", "of", "off"):
        return word in ("1", "on")
    for full, meaning in _BOOL_WORDS.items():
        if word and full.startswith(word):
            return meaning
    raise _Fails


def _float8(body: str) -> float:
    """strtod's syntax (hex, inf, nan included); out of range fails, also
    towards zero."""
    if _SPECIAL_FLOAT.fullmatch(body):
        if "nan" in body.lower():
            return math.nan
        return -math.inf if body.startswith("-") else math.inf
    if _HEX_FLOAT.fullmatch(body):
        mantissa = re.split("[pP]", body)[0].lower().replace("0x", "", 1)
        try:
            value = float.fromhex(body)
        except OverflowError as exc:
            raise _Fails from exc
    elif _DECIMAL_FLOAT.fullmatch(body):
        mantissa = re.split("[eE]", body)[0]
        value = float(body)
    else:
        raise _Fails
    if math.isinf(value) or (value == 0 and re.search("[1-9a-f]", mantissa)):
        raise _Fails
    return value


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


# LIKE.


def _match(t: str, p: str) -> bool | None:
    """Postgres' MatchText: True, False, or None to abort the whole match.

    A pattern ending in a lone backslash fails only when the matcher reaches
    it: `'abc' LIKE 'x\\'` is false, `'abc' LIKE 'a\\'` an error.
    """
    if p == "%":
        return True
    ti = pi = 0
    while ti < len(t) and pi < len(p):
        if p[pi] == "\\":
            pi += 1
            if pi >= len(p):
                raise _Fails
            if p[pi] != t[ti]:
                return False
        elif p[pi] == "%":
            pi += 1
            while pi < len(p) and p[pi] in "%_":
                if p[pi] == "_":
                    if ti >= len(t):
                        return None
                    ti += 1
                pi += 1
            if pi >= len(p):
                return True
            if p[pi] == "\\" and pi + 1 >= len(p):
                raise _Fails
            first = p[pi + 1] if p[pi] == "\\" else p[pi]
            # Try each place the rest of the pattern could start.
            while ti < len(t):
                if t[ti] == first:
                    matched = _match(t[ti:], p[pi:])
                    if matched is not False:
                        return matched
                ti += 1
            return None
        elif p[pi] != "_" and p[pi] != t[ti]:
            return False
        ti += 1
        pi += 1
    if ti < len(t):
        return False
    while pi < len(p) and p[pi] == "%":
        pi += 1
    return True if pi >= len(p) else None
