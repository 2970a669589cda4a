"""An injection corpus for DataService: hostile input in every identifier,
operator and value position of every RPC.

A hostile request is refused with the status and reason its case names, never
INTERNAL, with no text of our generated SQL and no traceback in what the client
sees, and it changes nothing: every table and the catalog are compared before
and after. A hostile value that is legitimately data (a note whose body is
`'; DROP TABLE notes; --`) is stored and read back byte for byte instead, and
changes nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import pytest

from authsvc.errors import Reason
from authsvc.v1 import data_pb2
from tests import test_data
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase
from tests.support.tokens import UID_A
from tests.test_data import ADMIN, ANON, Data, cond, notes, refusal

# The schema, seed and server of test_data.py: pytest finds fixtures by name.
database = test_data.database
data = test_data.data

# A table no request may touch, and a row for filters Postgres checks per row.
CANARY_SQL = f"""
CREATE TABLE public.canary (id int PRIMARY KEY, word text NOT NULL);
GRANT ALL ON public.canary TO anon, authenticated, service_role;
INSERT INTO public.canary VALUES (1, 'tweet');
INSERT INTO public.profiles VALUES ('{UID_A}', '{{"theme": "dark"}}', '{{}}');
"""
CANARY_ROWS = [{"id": 1, "word": "tweet"}]
SNAPSHOT_TABLES = (
    "public.notes",
    "public.accounts",
    "public.types",
    "public.profiles",
    "public.kept",
    "public.canary",
    "hidden.secrets",
)
# The shape of the database, so a dropped, created or altered object shows too.
CATALOG_QUERIES = {
    "relations": "SELECT n.nspname, c.relname, c.relkind::text, c.relacl::text, "
    "c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname IN ('public', 'hidden', 'auth') ORDER BY 1, 2",
    "columns": "SELECT attrelid::regclass::text, attname, atttypid::regtype::text "
    "FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped AND attrelid IN ("
    " SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname IN ('public', 'hidden')) ORDER BY 1, 2",
    "functions": "SELECT p.oid::regprocedure::text, p.prosecdef, p.proacl::text "
    "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname IN ('public', 'hidden', 'auth') ORDER BY 1",
    "policies": "SELECT polrelid::regclass::text, polname, "
    "pg_get_expr(polqual, polrelid) FROM pg_policy ORDER BY 1, 2",
    "roles": "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, rolinherit "
    "FROM pg_roles ORDER BY 1",
    "memberships": "SELECT roleid::regrole::text, member::regrole::text "
    "FROM pg_auth_members ORDER BY 1, 2",
}
# Text of the SQL the compiler and runner generate; a client never sees it.
GENERATED_SQL = (
    "authsvc_rows",
    "authsvc_kept",
    "authsvc_out",
    "jsonb_array_elements",
    "jsonb_populate_record",
    "set_config",
    "json_agg",
    "octet_length",
    "#>>",
    "::jsonb",
)
LEAKS = (*GENERATED_SQL, "Traceback", 'File "')
INVALID = grpc.StatusCode.INVALID_ARGUMENT
RPCS = frozenset({"Select", "Insert", "Upsert", "Update", "Delete", "Call"})
POSITIONS = frozenset(
    {
        "target.schema",
        "target.table",
        "columns",
        "order.column",
        "filter.column",
        "filter.op",
        "filter.value",
        "like",
        "in",
        "rows_json.keys",
        "rows_json.values",
        "values_json.keys",
        "values_json.values",
        "on_conflict",
        "returning",
        "call.schema",
        "call.function",
        "call.args.keys",
        "call.args.values",
        "mode",
    }
)

ModeFor = Callable[[Data], data_pb2.Mode | None]


def _as_admin(data: Data) -> data_pb2.Mode:
    return ADMIN


def _as_anon(data: Data) -> data_pb2.Mode:
    return ANON


def _as_user(data: Data) -> data_pb2.Mode:
    return data.user(UID_A)


def _token(token: str) -> ModeFor:
    return lambda data: data_pb2.Mode(user_token=token)


def _signed(uid: str = UID_A, **claims: Any) -> ModeFor:
    """A validly signed token with hostile claims."""
    return lambda data: data.user(uid, **claims)


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the refusal it must get."""

    position: str
    rpc: str
    reason: Reason
    code: grpc.StatusCode
    mode: ModeFor
    fields: dict[str, Any] = field(default_factory=dict)
    # Rewrites the encoded request, for bytes a protobuf client cannot build.
    raw: Callable[[bytes], bytes] | None = None

    def request(self, data: Data) -> Any:
        mode = self.mode(data)
        request_class = getattr(data_pb2, f"{self.rpc}Request")
        if mode is None:
            message = request_class(**self.fields)
        else:
            message = request_class(mode=mode, **self.fields)
        if self.raw is None:
            return message
        return self.raw(message.SerializeToString())

    def method(self, data: Data) -> Any:
        if self.raw is None:
            return getattr(data.stub, self.rpc)
        return data.channel.unary_unary(f"/authsvc.v1.DataService/{self.rpc}")


def _case(
    position: str,
    rpc: str,
    reason: Reason,
    code: grpc.StatusCode = INVALID,
    *,
    mode: ModeFor = _as_admin,
    **fields: Any,
) -> Hostile:
    return Hostile(position, rpc, reason, code, mode, fields)


def _not_utf8(
    position: str, rpc: str, raw: bytes, fields: Callable[[str], dict[str, Any]]
) -> Hostile:
    """A request with `raw` (not UTF-8) where `fields` puts its placeholder."""
    placeholder = ("~" * len(raw)).encode()

    def swap(encoded: bytes) -> bytes:
        assert encoded.count(placeholder) == 1
        return encoded.replace(placeholder, raw)

    return Hostile(
        position,
        rpc,
        Reason.MALFORMED_REQUEST,
        INVALID,
        _as_admin,
        fields(placeholder.decode()),
        swap,
    )


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2, encoded by hand."""
    size, length = len(payload), b""
    while size > 0x7F:
        length += bytes([size & 0x7F | 0x80])
        size >>= 7
    return bytes([field_number << 3 | 2]) + length + bytes([size]) + payload


def _with_nested_filter(depth: int) -> Callable[[bytes], bytes]:
    """Append a filter `depth` all_of groups deep; the client library itself
    refuses to build one deeper than it can parse."""
    node = cond("id", data_pb2.GTE, 0).SerializeToString()
    for _ in range(depth):
        node = _length_delimited(2, _length_delimited(1, node))
    return lambda encoded: encoded + _length_delimited(3, node)


def _target(table: str = "notes", schema: str = "") -> data_pb2.Target:
    return data_pb2.Target(schema=schema, table=table)


def _raw(column: str, op: int, value_json: str) -> data_pb2.Filter:
    """A condition whose value_json is sent exactly as written (maybe not JSON)."""
    return data_pb2.Filter(
        condition=data_pb2.Condition(column=column, op=op, value_json=value_json)
    )


def _returning(*columns: str) -> data_pb2.Returning:
    return data_pb2.Returning(columns=columns)


ID_1 = cond("id", data_pb2.EQ, 1)
ROW = json.dumps({"owner": UID_A, "body": "fine"})

# Every case documents its expectation in its code and reason. Unless a
# comment says otherwise, INVALID_ARGUMENT with UNKNOWN_TABLE, UNKNOWN_COLUMN
# or UNKNOWN_FUNCTION means the name never matched the catalog; BAD_VALUE means
# the text is not JSON; DATA_ERROR means the value reached Postgres only as a
# bound parameter and failed the cast to the column's type there.
HOSTILE: dict[str, Hostile] = {
    # target.schema: only exposed schemas, compared as whole strings.
    "schema-quote-drop": _case(
        "target.schema",
        "Select",
        Reason.UNKNOWN_TABLE,
        target=_target(schema='public"; DROP TABLE public.canary; --'),
    ),
    "schema-hidden-delete-all": _case(
        "target.schema",
        "Delete",
        Reason.UNKNOWN_TABLE,
        target=_target("secrets", "hidden"),
        all_rows=True,
    ),
    "schema-search-path-list": _case(
        "target.schema",
        "Insert",
        Reason.UNKNOWN_TABLE,
        target=_target(schema="public, hidden"),
        rows_json=ROW,
    ),
    "schema-nul": _case(
        "target.schema",
        "Update",
        Reason.UNKNOWN_TABLE,
        target=_target(schema="public\x00hidden"),
        values_json='{"body": "x"}',
        all_rows=True,
    ),
    # target.table
    "table-second-statement": _case(
        "target.table",
        "Update",
        Reason.UNKNOWN_TABLE,
        target=_target("notes; DELETE FROM public.canary"),
        values_json='{"body": "x"}',
        all_rows=True,
    ),
    "table-quote-union": _case(
        "target.table",
        "Select",
        Reason.UNKNOWN_TABLE,
        mode=_as_anon,
        target=_target(
            'notes" UNION SELECT id, NULL, value, true FROM hidden.secrets --'
        ),
    ),
    "table-block-comment": _case(
        "target.table",
        "Delete",
        Reason.UNKNOWN_TABLE,
        target=_target("canary/**/"),
        filter=ID_1,
    ),
    "table-schema-qualified": _case(
        "target.table",
        "Upsert",
        Reason.UNKNOWN_TABLE,
        target=_target("hidden.secrets"),
        rows_json='{"id": 1, "value": "x"}',
    ),
    "table-set-returning-function": _case(
        "target.table",
        "Select",
        Reason.UNKNOWN_TABLE,
        mode=_as_user,
        target=_target("generate_series(1, 10)"),
    ),
    # columns
    "columns-subquery": _case(
        "columns",
        "Select",
        Reason.UNKNOWN_COLUMN,
        mode=_as_anon,
        target=notes(),
        columns=["body", "(SELECT value FROM hidden.secrets)"],
    ),
    "columns-quote-from": _case(
        "columns",
        "Select",
        Reason.UNKNOWN_COLUMN,
        mode=_as_anon,
        target=notes(),
        columns=['body" FROM hidden.secrets --'],
    ),
    "columns-star-and-more": _case(
        "columns",
        "Select",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        columns=["*", "body"],
    ),
    "columns-nul": _case(
        "columns",
        "Select",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        columns=["body\x00, owner"],
    ),
    # order[].column
    "order-second-statement": _case(
        "order.column",
        "Select",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        order=[data_pb2.OrderBy(column="id; DROP TABLE public.canary")],
    ),
    "order-subquery": _case(
        "order.column",
        "Select",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        order=[
            data_pb2.OrderBy(column="id"),
            data_pb2.OrderBy(column="(SELECT pg_sleep(5))"),
        ],
    ),
    "order-direction-in-name": _case(
        "order.column",
        "Select",
        Reason.UNKNOWN_COLUMN,
        mode=_as_anon,
        target=notes(),
        order=[data_pb2.OrderBy(column="id DESC NULLS FIRST")],
    ),
    # filter condition column
    "filter-column-tautology": _case(
        "filter.column",
        "Select",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        filter=cond("owner = owner OR true --", data_pb2.EQ, 1),
    ),
    "filter-column-negated-in-group": _case(
        "filter.column",
        "Delete",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        filter=data_pb2.Filter(
            any_of=data_pb2.FilterGroup(
                filters=[
                    ID_1,
                    data_pb2.Filter(
                        condition=data_pb2.Condition(
                            column='id" OR "1"="1', op=data_pb2.EQ, value_json="1"
                        ),
                        negate=True,
                    ),
                ]
            )
        ),
    ),
    "filter-column-json-path": _case(
        "filter.column",
        "Update",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        values_json='{"public": true}',
        filter=cond("owner->>'sub'", data_pb2.EQ, "x"),
    ),
    # filter op: numbers outside the enum, and filters without a condition.
    "op-unspecified": _case(
        "filter.op",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=_raw("id", data_pb2.OPERATOR_UNSPECIFIED, "1"),
    ),
    "op-out-of-range": _case(
        "filter.op",
        "Select",
        Reason.BAD_FILTER,
        target=notes(),
        filter=_raw("id", 99, "1"),
    ),
    "op-negative": _case(
        "filter.op",
        "Update",
        Reason.BAD_FILTER,
        target=notes(),
        values_json='{"public": true}',
        filter=_raw("id", -1, "1"),
    ),
    "op-int32-max": _case(
        "filter.op",
        "Delete",
        Reason.BAD_FILTER,
        mode=_as_user,
        target=notes(),
        filter=_raw("id", 2**31 - 1, "1"),
    ),
    "filter-empty-node": _case(
        "filter.op",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=data_pb2.Filter(negate=True),
    ),
    "filter-empty-group": _case(
        "filter.op",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=data_pb2.Filter(any_of=data_pb2.FilterGroup()),
    ),
    # filter value_json that is not JSON at all.
    "value-second-statement": _case(
        "filter.value",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.EQ, "1; DELETE FROM public.canary"),
    ),
    "value-tautology": _case(
        "filter.value",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.EQ, "1 OR 1=1"),
    ),
    "value-placeholder": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.EQ, "$1"),
    ),
    "value-e-string": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("body", data_pb2.EQ, "E'\\x27 OR 1=1 --'"),
    ),
    "value-backslash-quote": _case(
        "filter.value",
        "Update",
        Reason.BAD_VALUE,
        target=notes(),
        values_json='{"public": true}',
        filter=_raw("body", data_pb2.EQ, "'\\'' OR 1=1"),
    ),
    "value-dollar-quoting": _case(
        "filter.value",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("body", data_pb2.EQ, "$$a1$$ OR $$1$$=$$1$$"),
    ),
    "value-line-comment": _case(
        "filter.value",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.GTE, "0 --"),
    ),
    "value-block-comment": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.EQ, "1 /* */"),
    ),
    "value-nan": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.GT, "NaN"),
    ),
    "value-minus-infinity": _case(
        "filter.value",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.GT, "-Infinity"),
    ),
    "value-raw-nul-in-string": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("body", data_pb2.EQ, '"a1\x00"'),
    ),
    "value-nested-past-the-parser-depth": _case(
        "filter.value",
        "Select",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("id", data_pb2.IN, "[" * 100_000 + "]" * 100_000),
    ),
    # Valid JSON, out of range for bigint (22003).
    "value-huge-integer": _case(
        "filter.value",
        "Delete",
        Reason.DATA_ERROR,
        target=notes(),
        filter=_raw("id", data_pb2.LT, "9" * 5_000),
    ),
    # JSON, but the wrong value for the column: Postgres refuses the cast.
    "value-sql-in-json-string": _case(
        "filter.value",
        "Delete",
        Reason.DATA_ERROR,
        target=notes(),
        filter=cond("id", data_pb2.EQ, "1 OR 1=1"),
    ),
    "value-object-for-scalar": _case(
        "filter.value",
        "Delete",
        Reason.DATA_ERROR,
        target=notes(),
        filter=cond("id", data_pb2.GT, {"$gt": 0}),
    ),
    "value-array-for-scalar": _case(
        "filter.value",
        "Update",
        Reason.DATA_ERROR,
        target=notes(),
        values_json='{"public": true}',
        filter=cond("id", data_pb2.EQ, [1, 2]),
    ),
    "value-huge-exponent": _case(
        "filter.value",
        "Select",
        Reason.DATA_ERROR,
        target=notes(),
        filter=_raw("id", data_pb2.LT, "1e1000000"),
    ),
    "value-escaped-nul": _case(
        "filter.value",
        "Select",
        Reason.DATA_ERROR,
        mode=_as_user,
        target=notes(),
        filter=_raw("body", data_pb2.EQ, '"a1\\u0000\' OR 1=1 --"'),
    ),
    "value-lone-surrogate": _case(
        "filter.value",
        "Select",
        Reason.DATA_ERROR,
        target=notes(),
        filter=_raw("body", data_pb2.EQ, '"\\ud800"'),
    ),
    "value-enum-tautology": _case(
        "filter.value",
        "Select",
        Reason.DATA_ERROR,
        target=_target("types"),
        filter=cond("m", data_pb2.EQ, "happy' OR '1'='1"),
    ),
    # Postgres converts the value only when it compares a row with it.
    "value-object-for-an-array": _case(
        "filter.value",
        "Select",
        Reason.DATA_ERROR,
        target=_target("profiles"),
        filter=cond("history", data_pb2.CONTAINS, {"a": "'; DROP TABLE notes; --"}),
    ),
    "value-sql-for-is": _case(
        "filter.value",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=cond("public", data_pb2.IS, "NULL OR 1=1"),
    ),
    # LIKE patterns
    "like-trailing-escape": _case(
        "like",
        "Select",
        Reason.DATA_ERROR,
        mode=_as_user,
        target=notes(),
        # Postgres finds the dangling escape only when it matches a row.
        filter=cond("body", data_pb2.LIKE, "%\\"),
    ),
    "like-on-a-number-column": _case(
        "like",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=cond("id", data_pb2.LIKE, "%"),
    ),
    "like-object-pattern": _case(
        "like",
        "Select",
        Reason.BAD_FILTER,
        target=notes(),
        filter=cond("body", data_pb2.ILIKE, {"$regex": ".*"}),
    ),
    "like-raw-sql-pattern": _case(
        "like",
        "Delete",
        Reason.BAD_VALUE,
        target=notes(),
        filter=_raw("body", data_pb2.LIKE, "'%' OR 1=1"),
    ),
    # IN lists
    "in-element-tautology": _case(
        "in",
        "Delete",
        Reason.DATA_ERROR,
        target=notes(),
        filter=cond("id", data_pb2.IN, ["1", "1) OR (1=1"]),
    ),
    "in-nested-arrays": _case(
        "in",
        "Select",
        Reason.DATA_ERROR,
        target=notes(),
        filter=cond("id", data_pb2.IN, [[1, 2], [3]]),
    ),
    "in-object-for-list": _case(
        "in",
        "Delete",
        Reason.BAD_FILTER,
        target=notes(),
        filter=cond("id", data_pb2.IN, {"0": 1, "1": "1 OR 1=1"}),
    ),
    "in-escaped-nul-element": _case(
        "in",
        "Update",
        Reason.DATA_ERROR,
        target=notes(),
        values_json='{"public": true}',
        filter=_raw("body", data_pb2.IN, '["a1", "\\u0000"]'),
    ),
    "in-on-an-array-column": _case(
        "in",
        "Select",
        Reason.BAD_FILTER,
        target=_target("types"),
        filter=cond("tags", data_pb2.IN, [["'; DROP TABLE notes; --"]]),
    ),
    # rows_json keys are column names.
    "insert-key-quote-drop": _case(
        "rows_json.keys",
        "Insert",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        rows_json=json.dumps({'body" ; drop table notes; --': "x"}),
    ),
    "insert-key-values-clause": _case(
        "rows_json.keys",
        "Insert",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        rows_json=json.dumps({"id) values (1); --": 1, "body": "x"}),
    ),
    "insert-key-in-a-later-row": _case(
        "rows_json.keys",
        "Insert",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        rows_json=json.dumps(
            [
                {"owner": UID_A, "body": "fine"},
                {"body) SELECT id, NULL, value, true FROM hidden.secrets --": 1},
            ]
        ),
    ),
    "insert-key-escaped-nul": _case(
        "rows_json.keys",
        "Insert",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        rows_json='{"bo\\u0000dy": "x", "owner": "' + UID_A + '"}',
    ),
    "insert-rows-sql-text": _case(
        "rows_json.keys",
        "Insert",
        Reason.BAD_VALUE,
        target=_target("canary"),
        rows_json="'; DROP TABLE canary; --",
    ),
    "insert-rows-array-of-strings": _case(
        "rows_json.keys",
        "Insert",
        Reason.BAD_REQUEST,
        target=_target("canary"),
        rows_json='["DROP TABLE canary"]',
    ),
    # rows_json values
    "insert-value-sql-for-uuid": _case(
        "rows_json.values",
        "Insert",
        Reason.DATA_ERROR,
        target=notes(),
        rows_json=json.dumps({"owner": "'; DROP TABLE notes; --", "body": "x"}),
    ),
    "insert-value-object-for-bigint": _case(
        "rows_json.values",
        "Insert",
        Reason.DATA_ERROR,
        target=notes(),
        rows_json=json.dumps({"id": {"$gt": 0}, "owner": UID_A, "body": "x"}),
    ),
    "insert-value-escaped-nul": _case(
        "rows_json.values",
        "Insert",
        Reason.DATA_ERROR,
        target=notes(),
        rows_json='{"owner": "' + UID_A + '", "body": "a\\u0000\'; --"}',
    ),
    "insert-value-huge-number": _case(
        "rows_json.values",
        "Insert",
        Reason.DATA_ERROR,
        target=notes(),
        rows_json='{"id": 1e400, "owner": "' + UID_A + '", "body": "x"}',
    ),
    "insert-value-nan": _case(
        "rows_json.values",
        "Insert",
        Reason.BAD_VALUE,
        target=_target("types"),
        rows_json='{"id": 1, "num": NaN}',
    ),
    # Upsert on_conflict columns and row keys.
    "upsert-conflict-do-update": _case(
        "on_conflict",
        "Upsert",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        rows_json=json.dumps({"id": 1, "owner": UID_A, "body": "x"}),
        on_conflict=["id) DO UPDATE SET body = 'pwned' --"],
    ),
    "upsert-conflict-quoted": _case(
        "on_conflict",
        "Upsert",
        Reason.UNKNOWN_COLUMN,
        target=_target("accounts"),
        rows_json='{"id": 1, "email": "a@x.io"}',
        on_conflict=['email" ; DROP TABLE accounts; --'],
    ),
    "upsert-conflict-where": _case(
        "on_conflict",
        "Upsert",
        Reason.UNKNOWN_COLUMN,
        target=_target("accounts"),
        rows_json='{"id": 1, "email": "a@x.io"}',
        on_conflict=["id WHERE false"],
        ignore_duplicates=True,
    ),
    # A real column without a unique constraint: Postgres says 42P10.
    "upsert-conflict-not-unique": _case(
        "on_conflict",
        "Upsert",
        Reason.BAD_REQUEST,
        target=_target("accounts"),
        rows_json='{"id": 9, "email": "p@x.io", "plan": "x"}',
        on_conflict=["plan"],
    ),
    "upsert-key-values-clause": _case(
        "rows_json.keys",
        "Upsert",
        Reason.UNKNOWN_COLUMN,
        target=_target("accounts"),
        rows_json=json.dumps({"id": 1, "email) VALUES (2, 'x') --": "x"}),
    ),
    # Update values_json keys are column names too.
    "update-key-set-clause": _case(
        "values_json.keys",
        "Update",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        values_json=json.dumps({"body = 'x', owner = owner --": "y"}),
        filter=ID_1,
    ),
    "update-key-quoted-list": _case(
        "values_json.keys",
        "Update",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        values_json=json.dumps({'public" = true, "body': "x"}),
        all_rows=True,
    ),
    "update-key-subquery": _case(
        "values_json.keys",
        "Update",
        Reason.UNKNOWN_COLUMN,
        target=_target("canary"),
        values_json=json.dumps({"(SELECT value FROM hidden.secrets)": 1}),
        all_rows=True,
    ),
    "update-values-sql-text": _case(
        "values_json.keys",
        "Update",
        Reason.BAD_VALUE,
        target=notes(),
        values_json="body = 'x'",
        all_rows=True,
    ),
    "update-values-json-string": _case(
        "values_json.keys",
        "Update",
        Reason.BAD_REQUEST,
        target=notes(),
        values_json='"DROP TABLE notes"',
        all_rows=True,
    ),
    # Update values_json values
    "update-value-sql-for-boolean": _case(
        "values_json.values",
        "Update",
        Reason.DATA_ERROR,
        target=notes(),
        values_json=json.dumps({"public": "true; DROP TABLE notes"}),
        filter=ID_1,
    ),
    "update-value-infinity": _case(
        "values_json.values",
        "Update",
        Reason.BAD_VALUE,
        target=_target("types"),
        values_json='{"num": Infinity}',
        all_rows=True,
    ),
    # returning columns: checked before anything runs.
    "returning-second-statement": _case(
        "returning",
        "Delete",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        filter=ID_1,
        returning=_returning("id; DROP TABLE public.canary"),
    ),
    "returning-star": _case(
        "returning",
        "Insert",
        Reason.UNKNOWN_COLUMN,
        target=notes(),
        rows_json=ROW,
        returning=_returning("*"),
    ),
    "returning-subquery": _case(
        "returning",
        "Upsert",
        Reason.UNKNOWN_COLUMN,
        target=_target("accounts"),
        rows_json='{"id": 1, "email": "a@x.io"}',
        returning=_returning("(SELECT value FROM hidden.secrets)"),
    ),
    "returning-function-call": _case(
        "returning",
        "Update",
        Reason.UNKNOWN_COLUMN,
        mode=_as_user,
        target=notes(),
        values_json='{"public": true}',
        filter=ID_1,
        returning=_returning("body\", current_setting('request.jwt.claims') --"),
    ),
    # Call: schema, function name, argument names and values.
    "call-schema-catalog": _case(
        "call.schema",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        schema="pg_catalog",
        function="pg_sleep",
        args_json='{"seconds": 5}',
    ),
    "call-schema-second-statement": _case(
        "call.schema",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        mode=_as_anon,
        schema="public; DROP TABLE public.canary; --",
        function="whoami",
    ),
    "call-schema-auth": _case(
        "call.schema",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        mode=_as_user,
        schema="auth",
        function="uid",
    ),
    "call-function-second-statement": _case(
        "call.function",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        mode=_as_anon,
        function="whoami(); DROP TABLE public.canary; --",
    ),
    "call-function-qualified": _case(
        "call.function",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        function="pg_catalog.pg_terminate_backend",
        args_json='{"pid": 1}',
    ),
    "call-function-quote": _case(
        "call.function",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        function='whoami"()--',
    ),
    "call-arg-named-sql": _case(
        "call.args.keys",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        function="slow",
        args_json=json.dumps({"seconds => 0); DROP TABLE public.canary; --": 1}),
    ),
    "call-arg-extra": _case(
        "call.args.keys",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        mode=_as_anon,
        function="whoami",
        args_json=json.dumps({"x') --": 1}),
    ),
    "call-arg-escaped-nul": _case(
        "call.args.keys",
        "Call",
        Reason.UNKNOWN_FUNCTION,
        function="slow",
        args_json='{"seconds\\u0000": 0}',
    ),
    "call-args-sql-text": _case(
        "call.args.keys",
        "Call",
        Reason.BAD_VALUE,
        function="slow",
        args_json="seconds => 0",
    ),
    "call-args-array": _case(
        "call.args.keys",
        "Call",
        Reason.BAD_REQUEST,
        function="slow",
        args_json='["seconds", 0]',
    ),
    "call-value-sql-for-float": _case(
        "call.args.values",
        "Call",
        Reason.DATA_ERROR,
        function="slow",
        args_json=json.dumps({"seconds": "0); SELECT pg_sleep(10); --"}),
    ),
    "call-value-sql-for-uuid": _case(
        "call.args.values",
        "Call",
        Reason.DATA_ERROR,
        mode=_as_user,
        function="notes_by",
        args_json=json.dumps({"who": "' OR 1=1 --"}),
    ),
    "call-value-object-for-float": _case(
        "call.args.values",
        "Call",
        Reason.DATA_ERROR,
        function="slow",
        args_json=json.dumps({"seconds": {"$gt": 0}}),
    ),
    "call-value-nan": _case(
        "call.args.values",
        "Call",
        Reason.BAD_VALUE,
        function="slow",
        args_json='{"seconds": NaN}',
    ),
    # mode: the token is verified before anything is compiled.
    "mode-token-sql": _case(
        "mode",
        "Delete",
        Reason.MALFORMED,
        grpc.StatusCode.UNAUTHENTICATED,
        mode=_token("'; DROP TABLE notes; --"),
        target=notes(),
        all_rows=True,
    ),
    "mode-token-nul": _case(
        "mode",
        "Select",
        Reason.MALFORMED,
        grpc.StatusCode.UNAUTHENTICATED,
        mode=_token("\x00"),
        target=notes(),
    ),
    "mode-token-empty": _case(
        "mode",
        "Update",
        Reason.TOKEN_MISSING,
        mode=_token(""),
        target=notes(),
        values_json='{"body": "x"}',
        all_rows=True,
    ),
    "mode-token-jws-shaped-sql": _case(
        "mode",
        "Call",
        Reason.MALFORMED,
        grpc.StatusCode.UNAUTHENTICATED,
        mode=_token("JyBPUiAxPTEgLS0.JyBPUiAxPTEgLS0.x"),
        function="whoami",
    ),
    "mode-token-role-sql": _case(
        "mode",
        "Call",
        Reason.ROLE_NOT_ALLOWED,
        grpc.StatusCode.PERMISSION_DENIED,
        mode=_signed(role="authenticated'; SET ROLE postgres; --"),
        function="whoami",
    ),
    # A signed token whose sub is not a uuid: auth.uid() in the notes policy
    # fails its cast in Postgres.
    "mode-token-sub-sql": _case(
        "mode",
        "Delete",
        Reason.DATA_ERROR,
        mode=_signed("'; DROP TABLE notes; --"),
        target=notes(),
        all_rows=True,
    ),
    "mode-token-sub-lone-surrogate": _case(
        "mode",
        "Select",
        Reason.MALFORMED,
        grpc.StatusCode.UNAUTHENTICATED,
        mode=_signed("\ud800"),
        target=notes(),
    ),
    # No identity holds a NUL (nor could Postgres' settings): refused by the verifier.
    "mode-token-sub-nul": _case(
        "mode",
        "Select",
        Reason.INVALID_CLAIM,
        grpc.StatusCode.UNAUTHENTICATED,
        mode=_signed("\x00'; --"),
        target=notes(),
    ),
    # Bytes that are not UTF-8 in a string field: refused while decoding.
    "table-not-utf8": _not_utf8(
        "target.table",
        "Select",
        b'notes"\xff; DROP TABLE notes; --',
        lambda s: {"target": _target(s)},
    ),
    "rows-json-value-not-utf8": _not_utf8(
        "rows_json.values",
        "Insert",
        b"\xed\xa0\x80'); --",
        lambda s: {"target": notes(), "rows_json": json.dumps({"body": s})},
    ),
    "call-function-not-utf8": _not_utf8(
        "call.function",
        "Call",
        b"whoami\xc0\xaf",
        lambda s: {"function": s},
    ),
    # Deeper than protobuf decodes (100 levels): refused before any SQL.
    "filter-nested-past-protobuf-depth": Hostile(
        "filter.op",
        "Delete",
        Reason.MALFORMED_REQUEST,
        INVALID,
        _as_admin,
        {"target": notes()},
        _with_nested_filter(200),
    ),
    "mode-missing": _case(
        "mode",
        "Delete",
        Reason.MODE_MISSING,
        mode=lambda data: None,
        target=notes(),
        all_rows=True,
    ),
}


async def _snapshot(db: TestDatabase) -> dict[str, list[Any]]:
    """Every row of the tables the corpus aims at, and the catalog's shape."""
    conn = await db.connect_as_superuser()
    try:
        state: dict[str, list[Any]] = {}
        for table in SNAPSHOT_TABLES:
            # `alias.*` is the whole row even where a column has the alias's name.
            rows = await conn.fetch(
                f"SELECT to_jsonb(r.*)::text FROM {table} AS r ORDER BY 1"
            )
            state[table] = [_exact_json(row[0]) for row in rows]
        for name, sql in CATALOG_QUERIES.items():
            state[name] = [tuple(r) for r in await conn.fetch(sql)]
        return state
    finally:
        await conn.close()


def _exact_json(text: str) -> Any:
    """JSON with every number exact, however long."""
    return json.loads(text, parse_int=Decimal, parse_float=Decimal)


def _assert_nothing_leaks(text: str) -> None:
    leaked = [marker for marker in LEAKS if marker in text]
    assert leaked == [], f"leaked {leaked} in {text!r}"


@pytest.fixture(scope="module", autouse=True)
async def canary(database: tuple[TestDatabase, PgBouncer]) -> None:
    """A table no request may touch, made before any server reads the catalog."""
    db, _ = database
    await db.execute_as_superuser(CANARY_SQL)


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE)
async def test_hostile_request_is_refused_precisely_and_changes_nothing(
    data: Data,
    case: Hostile,
) -> None:
    before = await _snapshot(data.db)

    result = await refusal(case.method(data), case.request(data))
    after = await _snapshot(data.db)

    assert (result.code, result.reason) == (case.code, case.reason.value)
    assert result.domain == "authsvc"
    assert result.reason in set(Reason)
    _assert_nothing_leaks(result.message)
    _assert_nothing_leaks(json.dumps(result.metadata))
    assert after == before
    assert after["public.canary"] == CANARY_ROWS


# Hostile text that is legitimately data: each write stores it as it came.

VERBATIM_TEXTS = {
    "quote-drop": "'; DROP TABLE notes; --",
    "identifier-quote": '"; DROP TABLE public.canary; --',
    "dollar-quoting": "$$; DELETE FROM public.canary; $$",
    "tagged-dollar-quoting": "$x$ ' $x$; DELETE FROM notes WHERE $x$1$x$ = '1'; --",
    "e-string": "E'\\''; DELETE FROM notes; --",
    "comments": "/* */ -- \n */ SELECT pg_sleep(10); /*",
    "placeholders": "$1 $2 ${body} :body %s %(body)s ? @p0",
    "backslashes": "C:\\new\\table \\\\ \\x00 \\u0000 \\'",
    "unicode-quotes": "\u02bc \u2019 \uff07 \u2033; DROP\r\nTABLE\tnotes; --\u2028\u00a0🦊",
    "json-lookalike": '{"body": "x"}], [{"owner": null}',
    "psql-meta": "\\! rm -rf / \\gexec \\copy notes to '/tmp/x'",
    "huge-number-text": "9" * 5_000,
}
WRITES = ("Insert", "Update", "Upsert", "Call")


async def _write_text(data: Data, write: str, text: str) -> list[int]:
    """Write `text` as a note body through one RPC; return the ids it landed in."""
    if write == "Insert":
        response = await data.stub.Insert(
            data_pb2.InsertRequest(
                mode=ADMIN,
                target=notes(),
                rows_json=json.dumps(
                    {"owner": UID_A, "body": text}, ensure_ascii=False
                ),
                returning=_returning("id"),
            ),
            timeout=10,
        )
        return [row["id"] for row in json.loads(response.rows_json)]
    if write == "Update":
        await data.stub.Update(
            data_pb2.UpdateRequest(
                mode=ADMIN,
                target=notes(),
                values_json=json.dumps({"body": text}, ensure_ascii=False),
                filter=ID_1,
                require_affected=True,
            ),
            timeout=10,
        )
        return [1]
    if write == "Upsert":
        await data.stub.Upsert(
            data_pb2.UpsertRequest(
                mode=ADMIN,
                target=notes(),
                rows_json=json.dumps(
                    {"id": 1, "owner": UID_A, "body": text}, ensure_ascii=False
                ),
            ),
            timeout=10,
        )
        return [1]
    # Call: a function that renames every note of the calling user.
    await data.stub.Call(
        data_pb2.CallRequest(
            mode=data.user(UID_A),
            function="rename_then_sleep",
            args_json=json.dumps({"new_body": text, "seconds": 0}, ensure_ascii=False),
        ),
        timeout=10,
    )
    return [1, 2]


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("text", VERBATIM_TEXTS.values(), ids=VERBATIM_TEXTS)
async def test_hostile_text_is_stored_verbatim_and_changes_nothing_else(
    data: Data,
    text: str,
    write: str,
) -> None:
    before = await _snapshot(data.db)

    ids = await _write_text(data, write, text)
    by_filter = await data.stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=notes(),
            columns=["id", "body"],
            filter=cond("body", data_pb2.EQ, text),
            order=[data_pb2.OrderBy(column="id")],
        ),
        timeout=10,
    )
    by_list = await data.stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=notes(),
            columns=["id"],
            filter=cond("body", data_pb2.IN, [text, "b1"]),
            order=[data_pb2.OrderBy(column="id")],
        ),
        timeout=10,
    )
    stored = await data.db.fetch_as_superuser(
        "SELECT id, convert_to(body, 'UTF8') AS bytes FROM public.notes "
        "WHERE id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )
    after = await _snapshot(data.db)

    assert json.loads(by_filter.rows_json) == [{"id": i, "body": text} for i in ids]
    assert [r["id"] for r in json.loads(by_list.rows_json)] == sorted([*ids, 3])
    assert [(r["id"], bytes(r["bytes"])) for r in stored] == [
        (i, text.encode()) for i in ids
    ]
    notes_before = {row["id"]: row for row in before.pop("public.notes")}
    notes_after = {row["id"]: row for row in after.pop("public.notes")}
    new_row = {"owner": UID_A, "public": False}
    expected = notes_before | {
        i: {**notes_before.get(i, {"id": i, **new_row}), "body": text} for i in ids
    }
    assert notes_after == expected
    assert after == before


HARMLESS_FILTERS = {
    "eq-tautology": cond("body", data_pb2.EQ, "' OR '1'='1"),
    "eq-placeholder": cond("body", data_pb2.EQ, "$1"),
    "eq-dollar-quoting": cond("body", data_pb2.EQ, "$$ OR $$1$$=$$1"),
    "neq-negated-tautology": data_pb2.Filter(
        condition=data_pb2.Condition(
            column="body", op=data_pb2.NEQ, value_json='"\' OR 1=1 --"'
        ),
        negate=True,
    ),
    "like-tautology": cond("body", data_pb2.LIKE, "%' OR '1'='1' --%"),
    "ilike-comment": cond("body", data_pb2.ILIKE, "A1' --"),
    "in-hostile-elements": cond(
        "body", data_pb2.IN, ["'); DELETE FROM notes; --", "$$ $$", "\\", "%"]
    ),
    "in-numbers-as-strings": cond("id", data_pb2.IN, ["-1", "0", " 7 "]),
}


@pytest.mark.parametrize("filter_", HARMLESS_FILTERS.values(), ids=HARMLESS_FILTERS)
async def test_hostile_filter_values_are_compared_as_data_and_match_nothing(
    data: Data,
    filter_: data_pb2.Filter,
) -> None:
    before = await _snapshot(data.db)

    selected = await data.stub.Select(
        data_pb2.SelectRequest(mode=ADMIN, target=notes(), filter=filter_),
        timeout=10,
    )
    updated = await data.stub.Update(
        data_pb2.UpdateRequest(
            mode=ADMIN, target=notes(), values_json='{"body": "x"}', filter=filter_
        ),
        timeout=10,
    )
    deleted = await data.stub.Delete(
        data_pb2.DeleteRequest(mode=data.user(UID_A), target=notes(), filter=filter_),
        timeout=10,
    )
    after = await _snapshot(data.db)

    assert (selected.rows_json, selected.affected) == ("[]", 0)
    assert (updated.affected, deleted.affected) == (0, 0)
    assert after == before


HOSTILE_JSON = {
    "k": "'; DROP TABLE notes; --",
    "$$": "/* */ $1 \\'",
    "nested": [["$1", {"E'x'": None}], [[[]]]],
    "big": 12345678901234567890123456789,
}
HOSTILE_TAGS = ["a,b", "}", "{", '"', "\\", "NULL", "'; DROP TABLE notes; --", ""]


async def test_hostile_json_and_array_elements_are_stored_verbatim(
    data: Data,
) -> None:
    target = _target("types")
    before = await _snapshot(data.db)

    await data.stub.Insert(
        data_pb2.InsertRequest(
            mode=ADMIN,
            target=target,
            rows_json=json.dumps({"id": 7, "j": HOSTILE_JSON, "tags": HOSTILE_TAGS}),
        ),
        timeout=10,
    )
    found = await data.stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=target,
            columns=["j", "tags"],
            filter=data_pb2.Filter(
                all_of=data_pb2.FilterGroup(
                    filters=[
                        cond("j", data_pb2.CONTAINS, {"k": HOSTILE_JSON["k"]}),
                        cond("tags", data_pb2.CONTAINS, HOSTILE_TAGS[2:]),
                    ]
                )
            ),
        ),
        timeout=10,
    )
    after = await _snapshot(data.db)

    assert json.loads(found.rows_json) == [{"j": HOSTILE_JSON, "tags": HOSTILE_TAGS}]
    assert after.pop("public.types") == [
        {"id": 7, "j": HOSTILE_JSON, "tags": HOSTILE_TAGS}
        | dict.fromkeys(("i8", "num", "u", "ts", "d", "b", "t", "arr", "m"))
    ]
    assert before.pop("public.types") == []
    assert after == before


async def test_a_number_longer_than_python_parses_is_stored_exactly(
    data: Data,
) -> None:
    """Valid JSON is not refused for its size: Postgres' numeric takes it."""
    huge = "9" * 5_000
    target = _target("types")
    before = await _snapshot(data.db)

    await data.stub.Insert(
        data_pb2.InsertRequest(
            mode=ADMIN, target=target, rows_json=f'{{"id": 8, "num": {huge}}}'
        ),
        timeout=10,
    )
    found = await data.stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=target,
            columns=["id"],
            filter=_raw("num", data_pb2.EQ, huge),
        ),
        timeout=10,
    )
    stored = await data.db.fetchval_as_superuser(
        "SELECT num::text FROM public.types WHERE id = 8"
    )
    after = await _snapshot(data.db)

    assert json.loads(found.rows_json) == [{"id": 8}]
    assert stored == huge
    assert [row["id"] for row in after.pop("public.types")] == [8]
    assert before.pop("public.types") == []
    assert after == before


async def test_hostile_token_claims_reach_auth_jwt_verbatim(
    data: Data,
) -> None:
    email = "x@y.z'); DROP TABLE notes; --"
    metadata = {"name": "$$; DELETE FROM public.canary; $$", "bio": "\\'\" --"}
    before = await _snapshot(data.db)

    response = await data.stub.Call(
        data_pb2.CallRequest(
            mode=data.user(UID_A, email=email, user_metadata=metadata),
            function="whoami",
        ),
        timeout=10,
    )
    after = await _snapshot(data.db)

    claims = json.loads(response.result_json)["claims"]
    assert (claims["email"], claims["user_metadata"]) == (email, metadata)
    assert after == before


def test_the_corpus_is_large_and_covers_every_position_and_rpc() -> None:
    # + json and array elements, a huge number, token claims
    verbatim = len(VERBATIM_TEXTS) * len(WRITES) + 3
    cases = len(HOSTILE) + verbatim + len(HARMLESS_FILTERS)

    assert len(HOSTILE) >= 40
    assert cases >= 45
    assert {case.position for case in HOSTILE.values()} == POSITIONS
    assert {case.rpc for case in HOSTILE.values()} == RPCS
