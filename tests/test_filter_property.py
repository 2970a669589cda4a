"""Property: a filter tree either selects exactly the rows SQL's logic keeps, or
is refused with INVALID_ARGUMENT, never with another status.

Hypothesis builds trees (every operator on every column, values that fit the
column and values that do not, negation, groups nested four deep, empty groups,
now and then a tree over the server's limits) and sends each through the real
DataService.Select, in admin mode, over a small table. The rows it must return
come from tests/support/filter_reference.py, a Python reference of Postgres'
semantics that does not look at the compiler.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass
from itertools import cycle, islice
from typing import Any

import grpc
import pytest
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from authsvc.config import DEFAULT_DB_MAX_CONDITIONS, DEFAULT_DB_MAX_FILTER_DEPTH
from authsvc.v1 import data_pb2
from tests.conftest import Refusal
from tests.support.filter_reference import (
    COMPARISONS,
    Blank,
    Cond,
    Group,
    Node,
    Table,
    expected,
)
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase
from tests.test_data import ADMIN, Data

# The module's database and the server in front of it, reused as they are.
from tests.test_data import data as data
from tests.test_data import database as database

MAX_EXAMPLES = 300
CALL_TIMEOUT_SECONDS = 10.0
MAX_GROUP_DEPTH = 4

TABLE = "filter_rows"
# COLLATE "C": text order and ILIKE's case folding (ASCII only) are then the
# ones the reference implements, whatever the cluster's default collation.
TABLE_SQL = f"""
CREATE TABLE public.{TABLE} (
  id int PRIMARY KEY, n int, t text COLLATE "C", b boolean, f float8
);
GRANT SELECT ON public.{TABLE} TO service_role;
"""
INSERT_SQL = f"""
INSERT INTO public.{TABLE} (id, n, t, b, f)
  SELECT id, n, t, b, f::float8 FROM jsonb_to_recordset($1::jsonb)
  AS r(id int, n int, t text, b boolean, f text);
"""


@dataclass(frozen=True)
class Row:
    id: int
    n: int | None
    t: str | None
    b: bool | None
    f: float | None


ROWS = (
    Row(1, 0, "a", True, 0.0),
    Row(2, 1, "A", False, -0.0),
    Row(3, -1, "abc", None, 0.5),
    Row(4, 5, "ABC", True, 1.5),
    Row(5, 42, "aBc", False, -2.25),
    Row(6, 100, "", None, 100.0),
    Row(7, None, None, None, None),
    Row(8, 2_147_483_647, "%", True, math.nan),
    Row(9, -2_147_483_648, "_", False, math.inf),
    Row(10, 7, "a%b", True, -math.inf),
    Row(11, 3, "a_b", None, 1e300),
    Row(12, None, "a\\b", True, 5e-324),
    Row(13, 2, "\\", False, 42.0),
    Row(14, 5, "50%", None, 0.1),
    Row(15, 0, "x_y_z", True, None),
    Row(16, -7, "é", False, 1.0),
    Row(17, 42, "É", None, 7.0),
    Row(18, None, "42", True, -1.0),
    Row(19, 10, "1.50", False, 2.5),
    Row(20, 99, "true", None, math.nan),
    Row(21, 1, "[1, 2]", True, 0.0),
    Row(22, None, " spaced ", False, 3.0),
    Row(23, 6, "Hello World", True, None),
    Row(24, 8, "hello", None, 1e-300),
    Row(25, 101, "a\\%", False, 5.0),
    Row(26, -2, '{"a": 1}', True, -0.5),
    Row(27, 4, "ab", False, 0.25),
    Row(28, None, "a%", True, -100.0),
    Row(29, 11, "Ab", None, 2e-308),
    Row(30, -3, "_b_", False, 6.0),
    Row(31, 12, "Café", True, 12.5),
    Row(32, None, "CAFÉ", None, -12.5),
)
KINDS = {"id": "int", "n": "int", "t": "text", "b": "bool", "f": "float"}
# The data fixture runs the server with the default limits.
REFERENCE = Table(
    kinds=KINDS,
    rows=tuple(asdict(row) for row in ROWS),
    max_conditions=DEFAULT_DB_MAX_CONDITIONS,
    max_filter_depth=DEFAULT_DB_MAX_FILTER_DEPTH,
)


PROTO_OPS = {
    "unspecified": data_pb2.OPERATOR_UNSPECIFIED,
    "eq": data_pb2.EQ,
    "neq": data_pb2.NEQ,
    "gt": data_pb2.GT,
    "gte": data_pb2.GTE,
    "lt": data_pb2.LT,
    "lte": data_pb2.LTE,
    "like": data_pb2.LIKE,
    "ilike": data_pb2.ILIKE,
    "in": data_pb2.IN,
    "is": data_pb2.IS,
    "contains": data_pb2.CONTAINS,
    "contained_by": data_pb2.CONTAINED_BY,
}


def to_proto(node: Node) -> data_pb2.Filter:
    if isinstance(node, Cond):
        condition = data_pb2.Condition(
            column=node.column, op=PROTO_OPS[node.op], value_json=node.value_json
        )
        return data_pb2.Filter(condition=condition, negate=node.negate)
    if isinstance(node, Group):
        group = data_pb2.FilterGroup(filters=[to_proto(item) for item in node.items])
        if node.any_:
            return data_pb2.Filter(any_of=group, negate=node.negate)
        return data_pb2.Filter(all_of=group, negate=node.negate)
    return data_pb2.Filter(negate=node.negate)


# Values and trees.


def _mostly(
    usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int
) -> st.SearchStrategy[Any]:
    """`rare` about once in `one_in` draws; shrinks towards `usual`."""
    return st.integers(1, one_in).flatmap(lambda k: rare if k == one_in else usual)


def _strings(*texts: str) -> st.SearchStrategy[str]:
    return st.sampled_from(texts).map(json.dumps)


def _raw(*texts: str) -> st.SearchStrategy[str]:
    return st.sampled_from(texts)


TEXTS = tuple(row.t for row in ROWS if row.t is not None)
PATTERN_CHARS = "aAbBcC%_\\é É"
LIKE_PATTERNS = (
    *("a%", "%b", "_", "%\\%%", "a\\_b", "\\", "%\\", "a\\", "A%C", "%%"),
    *("%_%", "h%o w%", "\\\\", "a\\%", "%é%", "_B_", ""),
)
# Values are JSON text. Numbers are sent as written: jsonb keeps their scale
# (`2.50`) and writes exponents out (`1E2` is `100`) when they become text.
_small_ints = st.integers(-3, 110).map(str)
_ints_out_of_range = _raw(str(2**31), str(-(2**31) - 1), "10000000000000000000")
_int_values = st.one_of(
    _small_ints,
    _raw(str(2**31 - 1), str(-(2**31)), "-0", "1E2", "1e+2"),
    _strings(" 7 ", "+3", "-0", "42", "\t5\n"),
)
_not_int_values = st.one_of(
    _ints_out_of_range,
    _raw("1.5", "1.0", "true", "[1]"),
    _strings("1.5", "1e2", "0x10", "1_000", "", "abc", "2147483648"),
)
_float_values = st.one_of(
    _small_ints,
    _raw("0.5", "1.5", "-2.25", "2.50", "-0.0", "0.1", "42.0", "1e300", "5e-324"),
    _raw("1.5e-7", "100.000", "2e-308", "-100"),
    _strings("NaN", "-Infinity", "inf", "nan(1)", ".5", "5.", "0x10", " 7 ", "1e2"),
)
_not_float_values = st.one_of(
    _raw("1e400", "1e-400", "true", "[0.5]"),
    _strings("Infinityx", "1e400", "1e-400", "", "1_000", "abc", "0x"),
)
_bool_values = st.one_of(
    _raw("true", "false", "0", "1"),
    _strings("t", "TRUE", " yes ", "off", "of", "n", "0", "1", "tr", "ON"),
)
_not_bool_values = st.one_of(
    _raw("2", "1.0", "[true]"), _strings("o", "truex", "", "2", "yes please")
)
_text_values = st.one_of(
    st.sampled_from(TEXTS).map(json.dumps),
    st.text(alphabet=PATTERN_CHARS, max_size=6).map(json.dumps),
    _raw("42", "1.50", "1.5", "true", "[1, 2]", '{"a": 1}', '{"a":1}', "[1,2]"),
)
# jsonb refuses both; Python's json module takes them.
_jsonb_refused = _strings("\x00", "a\x00b", "\ud800")
VALUES = {
    "int": _mostly(_int_values, _not_int_values, one_in=6),
    "float": _mostly(_float_values, _not_float_values, one_in=6),
    "bool": _mostly(_bool_values, _not_bool_values, one_in=6),
    "text": _mostly(_text_values, _jsonb_refused, one_in=40),
}
_any_scalar = st.one_of(*VALUES.values(), _raw("null"))
_any_value = st.one_of(
    _any_scalar,
    st.lists(_any_scalar, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
    _raw("[[1, 2]]", '[{"a": 1}, 2]', '{"bb": [1, 2], "a": null}', "[]"),
    # Not JSON, or JSON authsvc refuses (a key twice).
    _raw("", "NaN", "{", "'a'", "[1,]", '{"a": 1, "a": 2}', "Infinity", "tru", "01"),
)


@st.composite
def _pattern_like_a_row(draw: st.DrawFn) -> str:
    """A row's text with some characters swapped case, wildcarded or escaped."""
    text = draw(st.sampled_from(TEXTS))
    edits = (lambda c: c, str.swapcase, lambda c: "_", lambda c: "%", "\\{}".format)
    return "".join(draw(st.sampled_from(edits))(c) for c in text)


_patterns = _mostly(
    st.one_of(
        _pattern_like_a_row(),
        st.sampled_from(LIKE_PATTERNS),
        st.text(alphabet=PATTERN_CHARS, max_size=6),
    ).map(json.dumps),
    _jsonb_refused,
    one_in=40,
)
# The text column twice: it has the most rules (LIKE, ILIKE, text of JSON).
_COLUMNS = ("id", "n", "t", "t", "b", "f")
_OPS = {
    "int": (*COMPARISONS, "in", "is"),
    "float": (*COMPARISONS, "in", "is"),
    "bool": (*COMPARISONS, "in", "is"),
    "text": (*COMPARISONS, "like", "ilike", "like", "ilike", "in", "is"),
}


@st.composite
def _fitting_condition(draw: st.DrawFn) -> Cond:
    """An operator the column takes, with a value that mostly converts."""
    column = draw(st.sampled_from(_COLUMNS))
    kind = KINDS[column]
    op = draw(st.sampled_from(_OPS[kind]))
    if op == "is":
        value = draw(_raw("null", "true", "false") if kind == "bool" else _raw("null"))
    elif op in ("like", "ilike"):
        value = draw(_patterns)
    elif op == "in":
        element = _mostly(VALUES[kind], _raw("null"), one_in=6)
        value = "[" + ", ".join(draw(st.lists(element, max_size=4))) + "]"
    else:
        value = draw(VALUES[kind])
    return Cond(column, op, value, draw(st.booleans()))


_any_condition = st.builds(
    Cond,
    st.sampled_from((*KINDS, "nope", "N", "id ", '"t"', "*", "")),
    st.sampled_from(tuple(PROTO_OPS)),
    _any_value,
    st.booleans(),
)
_leaves = _mostly(
    _mostly(_fitting_condition(), _any_condition, one_in=8),
    st.builds(Blank, st.booleans()),
    one_in=80,
)


def _trees(depth: int) -> st.SearchStrategy[Node]:
    """Groups nested up to `depth` deep; now and then an empty group."""
    if depth == 0:
        return _leaves
    items = _mostly(
        st.lists(_trees(depth - 1), min_size=1, max_size=3).map(tuple),
        st.just(()),
        one_in=30,
    )
    return st.one_of(_leaves, st.builds(Group, st.booleans(), items, st.booleans()))


def _nested(node: Node, levels: int) -> Node:
    for _ in range(levels):
        node = Group(False, (node,))
    return node


_over_limits = st.one_of(
    st.lists(_leaves, min_size=1, max_size=3).map(
        lambda items: Group(
            True, tuple(islice(cycle(items), DEFAULT_DB_MAX_CONDITIONS + 1))
        )
    ),
    _leaves.map(lambda leaf: _nested(leaf, DEFAULT_DB_MAX_FILTER_DEPTH + 1)),
)


def filters() -> st.SearchStrategy[Node]:
    """Trees within the server's limits (3**4 conditions at most), and rarely
    one over them."""
    return _mostly(_trees(MAX_GROUP_DEPTH), _over_limits, one_in=50)


# What the server answered.


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    ids: tuple[int, ...] = ()


async def _select(data: Data, tree: Node | None) -> Outcome:
    request = data_pb2.SelectRequest(
        mode=ADMIN,
        target=data_pb2.Target(table=TABLE),
        columns=["id"],
        order=[data_pb2.OrderBy(column="id")],
    )
    if tree is not None:
        request.filter.CopyFrom(to_proto(tree))
    try:
        response = await data.stub.Select(request, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as exc:
        refusal = Refusal.of(exc)
        return Outcome(refusal.code, refusal.reason, refusal.message)
    ids = tuple(row["id"] for row in json.loads(response.rows_json))
    return Outcome(grpc.StatusCode.OK, ids=ids)


def check(tree: Node | None, outcome: Outcome) -> None:
    want = expected(tree, REFERENCE)
    note(
        f"expected: refusals={sorted(want.refusals)} may_fail={want.may_fail} "
        f"kept={want.kept} undecided={want.undecided}"
    )
    note(f"outcome: {outcome}")

    assert outcome.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (
        f"only OK or INVALID_ARGUMENT may come back, got {outcome}"
    )
    if want.refusals:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, "answered, not refused"
        assert outcome.reason in want.refusals
        return
    if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert want.may_fail, "refused, though every value converts"
        assert outcome.reason == "DATA_ERROR"
        return

    assert not want.undecided, f"rows {want.undecided} need a value that fails"
    assert outcome.ids == want.kept


# The test.


@pytest.fixture(scope="module")
async def filter_table(database: tuple[TestDatabase, PgBouncer]) -> None:
    db, _ = database
    # float8 from text keeps NaN, the infinities and -0, which JSON cannot hold.
    rows = [asdict(row) | {"f": None if row.f is None else repr(row.f)} for row in ROWS]
    await db.execute_as_superuser(TABLE_SQL)
    await db.execute_as_superuser(INSERT_SQL, json.dumps(rows))


@pytest.mark.usefixtures("filter_table")
async def test_filter_trees_select_what_sql_keeps_or_are_invalid_argument(
    data: Data,
) -> None:
    loop = asyncio.get_running_loop()

    def select(tree: Node | None) -> Outcome:
        # The server and the fixture's channel (which presents the test caller's
        # key) live on this test's event loop; Hypothesis runs in a worker
        # thread and hands each call back to that loop.
        call = asyncio.run_coroutine_threadsafe(_select(data, tree), loop)
        return call.result(timeout=CALL_TIMEOUT_SECONDS * 2)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, print_blob=True)
    @given(tree=filters())
    @example(tree=None)
    @example(tree=Cond("n", "eq", "5", negate=True))  # NOT unknown is unknown
    @example(tree=Cond("f", "eq", json.dumps("NaN")))  # NaN equals NaN
    @example(tree=Cond("t", "ilike", json.dumps("cafÉ")))  # folds ASCII only
    @example(tree=Cond("t", "like", json.dumps("q\\")))  # escape never reached
    @example(tree=Group(False, (Cond("id", "eq", "-5"), Cond("n", "in", '["x"]'))))
    def filter_matches_reference(tree: Node | None) -> None:
        check(tree, select(tree))

    await asyncio.to_thread(filter_matches_reference)
