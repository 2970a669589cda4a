"""DataService's request limits, each at its edge and one past it.

The server here runs with small limits so that the edges are cheap to reach;
the defaults are the same code with larger numbers.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from authsvc.v1 import data_pb2, data_pb2_grpc
from tests.conftest import Refusal, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase
from tests.test_data import ADMIN, _wait_data_serving, pooled
from tests.test_data import database as database  # the module's test database

LIMITS = {
    "AUTHSVC_DB_MAX_CONDITIONS": "3",
    "AUTHSVC_DB_MAX_FILTER_DEPTH": "2",
    "AUTHSVC_DB_MAX_IN_LIST": "3",
    "AUTHSVC_DB_MAX_INSERT_ROWS": "2",
    "AUTHSVC_DB_MAX_AFFECTED": "2",
    "AUTHSVC_DB_MAX_ROWS": "2",
}
ACCOUNTS = data_pb2.Target(table="accounts")


@pytest.fixture
async def stub(
    database: tuple[TestDatabase, PgBouncer], start_server: StartServer, jwks: JwksStub
) -> data_pb2_grpc.DataServiceStub:
    db, bouncer = database
    await db.execute_as_superuser(
        "TRUNCATE public.accounts; INSERT INTO public.accounts (id, email) "
        "VALUES (1, 'a@x'), (2, 'b@x'), (3, 'c@x')"
    )
    await db.execute_as_superuser(
        "CREATE TABLE IF NOT EXISTS public.seats (org int, seat int, "
        "PRIMARY KEY (org, seat)); GRANT SELECT ON public.seats TO service_role; "
        "TRUNCATE public.seats; INSERT INTO public.seats VALUES (1, 1), (1, 2), (1, 3)"
    )
    await db.execute_as_superuser(
        "CREATE TABLE IF NOT EXISTS public.plans (id int PRIMARY KEY); "
        "CREATE TABLE IF NOT EXISTS public.plans_archived () INHERITS (public.plans); "
        "GRANT SELECT ON public.plans, public.plans_archived TO service_role; "
        "TRUNCATE public.plans, public.plans_archived; "
        "INSERT INTO public.plans VALUES (1); "
        "INSERT INTO public.plans_archived VALUES (1), (1)"
    )
    await db.execute_as_superuser(
        "DO $$ BEGIN CREATE DOMAIN public.short_code AS varchar(3); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
        "CREATE TABLE IF NOT EXISTS public.sized (id int PRIMARY KEY, "
        "code varchar(3), fixed char(3), price numeric(5,2), at timestamp(0), "
        "codes varchar(3)[], short public.short_code); "
        "GRANT SELECT, DELETE ON public.sized TO service_role; TRUNCATE public.sized; "
        "INSERT INTO public.sized VALUES "
        "(1, 'abc', 'abc', 1.23, '2020-01-01 00:00:00', '{abc}', 'abc'), "
        "(2, 'xyz', 'xyz', 9.99, '2021-01-01 00:00:00', '{xyz}', 'xyz')"
    )
    await db.execute_as_superuser(
        "CREATE OR REPLACE FUNCTION public.spelled(code char(3), flags bit(3)) "
        "RETURNS text LANGUAGE sql IMMUTABLE "
        "AS $$ SELECT code::text || ' ' || flags::text $$"
    )
    server = await start_server(
        jwks, DATABASE_URL=pooled(bouncer, db), AUTHSVC_DB_ALLOW_ADMIN="true", **LIMITS
    )
    await _wait_data_serving(server.channel)
    return data_pb2_grpc.DataServiceStub(server.channel)


def _cond(op: int, value: Any) -> data_pb2.Filter:
    return data_pb2.Filter(
        condition=data_pb2.Condition(column="id", op=op, value_json=json.dumps(value))
    )


def _any(*filters: data_pb2.Filter) -> data_pb2.Filter:
    return data_pb2.Filter(any_of=data_pb2.FilterGroup(filters=filters))


async def _ids(stub: data_pb2_grpc.DataServiceStub, where: data_pb2.Filter) -> Any:
    response = await stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=ACCOUNTS,
            columns=["id"],
            filter=where,
            order=[data_pb2.OrderBy(column="id")],
        ),
        timeout=10,
    )
    return [row["id"] for row in json.loads(response.rows_json)]


async def _refused(call: Any) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return Refusal.of(caught.value)


def _limit(refusal: Refusal) -> tuple[grpc.StatusCode, str, str]:
    return refusal.code, refusal.reason, refusal.metadata.get("limit", "")


async def test_conditions_at_the_limit_run_and_one_more_is_refused(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    three = [_cond(data_pb2.EQ, i) for i in (1, 2, 3)]

    at_edge = await _ids(stub, _any(*three))
    past = await _refused(_ids(stub, _any(*three, _cond(data_pb2.EQ, 4))))

    assert at_edge == [1, 2]  # the row cap is 2
    assert _limit(past) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "LIMIT_EXCEEDED",
        "max_conditions",
    )
    assert past.metadata["max"] == "3"
    assert "AUTHSVC_DB_MAX_CONDITIONS" in past.message


async def test_group_depth_at_the_limit_runs_and_one_deeper_is_refused(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    two_deep = _any(_any(_cond(data_pb2.EQ, 1)))

    at_edge = await _ids(stub, two_deep)
    past = await _refused(_ids(stub, _any(two_deep)))

    assert at_edge == [1]
    assert _limit(past)[1:] == ("LIMIT_EXCEEDED", "max_filter_depth")


async def test_in_list_at_the_limit_runs_and_one_longer_is_refused(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    at_edge = await _ids(stub, _cond(data_pb2.IN, [3, 4, 5]))
    past = await _refused(_ids(stub, _cond(data_pb2.IN, [3, 4, 5, 6])))

    assert at_edge == [3]
    assert _limit(past)[1:] == ("LIMIT_EXCEEDED", "max_in_list")


async def test_insert_rows_at_the_limit_go_in_and_one_more_writes_nothing(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    def insert(*ids: int) -> Any:
        rows = [{"id": i, "email": f"{i}@new"} for i in ids]
        return stub.Insert(
            data_pb2.InsertRequest(
                mode=ADMIN, target=ACCOUNTS, rows_json=json.dumps(rows)
            ),
            timeout=10,
        )

    past = await _refused(insert(10, 11, 12))
    at_edge = await insert(10, 11)

    assert _limit(past)[1:] == ("LIMIT_EXCEEDED", "max_insert_rows")
    assert at_edge.affected == 2
    assert await _ids(stub, _cond(data_pb2.GTE, 10)) == [10, 11]


async def test_rows_affected_at_the_cap_are_changed_one_more_changes_nothing(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    def update(where: data_pb2.Filter, max_affected: int = 0) -> Any:
        return stub.Update(
            data_pb2.UpdateRequest(
                mode=ADMIN,
                target=ACCOUNTS,
                values_json='{"plan": "pro"}',
                filter=where,
                max_affected=max_affected,
            ),
            timeout=10,
        )

    everyone = _cond(data_pb2.GT, 0)
    past = await _refused(update(everyone))
    # A request cannot raise the server's cap.
    raised = await _refused(update(everyone, max_affected=100))
    at_edge = await update(_cond(data_pb2.IN, [1, 2]))

    assert (past.code, past.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOO_MANY_ROWS",
    )
    assert "AUTHSVC_DB_MAX_AFFECTED" in past.message
    assert raised.reason == "TOO_MANY_ROWS"
    assert at_edge.affected == 2
    pro = await stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=ACCOUNTS,
            columns=["id"],
            filter=data_pb2.Filter(
                condition=data_pb2.Condition(
                    column="plan", op=data_pb2.EQ, value_json='"pro"'
                )
            ),
        ),
        timeout=10,
    )
    assert sorted(row["id"] for row in json.loads(pro.rows_json)) == [1, 2]


async def test_rows_returned_at_the_cap_are_whole_and_past_it_are_truncated(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    def select(where: data_pb2.Filter) -> Any:
        return stub.Select(
            data_pb2.SelectRequest(mode=ADMIN, target=ACCOUNTS, filter=where),
            timeout=10,
        )

    at_edge = await select(_cond(data_pb2.IN, [1, 2]))
    past = await select(_cond(data_pb2.IN, [1, 2, 3]))

    assert (len(json.loads(at_edge.rows_json)), at_edge.truncated) == (2, False)
    assert (len(json.loads(past.rows_json)), past.truncated) == (2, True)


async def test_truncation_keeps_the_first_rows_in_order_and_a_key_lookup_is_whole(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    async def select(where: data_pb2.Filter | None, descending: bool) -> Any:
        return await stub.Select(
            data_pb2.SelectRequest(
                mode=ADMIN,
                target=ACCOUNTS,
                columns=["id", "email"],
                filter=where,
                order=[data_pb2.OrderBy(column="id", descending=descending)],
            ),
            timeout=10,
        )

    newest = await select(None, descending=True)
    oldest = await select(None, descending=False)
    by_key = await select(_cond(data_pb2.EQ, 3), descending=False)
    # Equal to a key in one branch of an OR pins nothing.
    either = await select(
        _any(_cond(data_pb2.EQ, 1), _cond(data_pb2.GT, 1)), descending=False
    )

    assert (json.loads(newest.rows_json), newest.truncated) == (
        [{"id": 3, "email": "c@x"}, {"id": 2, "email": "b@x"}],
        True,
    )
    assert [r["id"] for r in json.loads(oldest.rows_json)] == [1, 2]
    assert (json.loads(by_key.rows_json), by_key.truncated, by_key.affected) == (
        [{"id": 3, "email": "c@x"}],
        False,
        1,
    )
    assert ([r["id"] for r in json.loads(either.rows_json)], either.truncated) == (
        [1, 2],
        True,
    )


async def test_a_key_lookup_on_a_table_others_inherit_from_is_still_capped(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    """The parent's key is unique in the parent only: its children's rows
    (which a select on the parent also reads) may repeat it."""
    response = await stub.Select(
        data_pb2.SelectRequest(
            mode=ADMIN,
            target=data_pb2.Target(table="plans"),
            filter=_cond(data_pb2.EQ, 1),
        ),
        timeout=10,
    )

    assert (len(json.loads(response.rows_json)), response.truncated) == (2, True)


async def test_filter_values_are_never_cut_to_the_columns_length_or_scale(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    """A value longer or finer than the column's type matches nothing: it is
    compared as it was sent, not cut to varchar(3) or rounded to numeric(5,2)."""

    def on(column: str, op: int, value: Any) -> data_pb2.Filter:
        return data_pb2.Filter(
            condition=data_pb2.Condition(
                column=column, op=op, value_json=json.dumps(value)
            )
        )

    async def ids(where: data_pb2.Filter) -> list[int]:
        response = await stub.Select(
            data_pb2.SelectRequest(
                mode=ADMIN,
                target=data_pb2.Target(table="sized"),
                columns=["id"],
                filter=where,
                order=[data_pb2.OrderBy(column="id")],
            ),
            timeout=10,
        )
        return [row["id"] for row in json.loads(response.rows_json)]

    found = {
        "varchar EQ": await ids(on("code", data_pb2.EQ, "abcdef")),
        "varchar NEQ": await ids(on("code", data_pb2.NEQ, "abcdef")),
        "varchar IN": await ids(on("code", data_pb2.IN, ["abcdef"])),
        "char EQ": await ids(on("fixed", data_pb2.EQ, "abcdef")),
        "char EQ exact": await ids(on("fixed", data_pb2.EQ, "abc")),
        "numeric EQ": await ids(on("price", data_pb2.EQ, 1.234)),
        "numeric GT": await ids(on("price", data_pb2.GT, 1.225)),
        "timestamp EQ": await ids(on("at", data_pb2.EQ, "2020-01-01 00:00:00.4")),
        "array CONTAINS": await ids(on("codes", data_pb2.CONTAINS, ["abcdef"])),
        "domain EQ": await ids(on("short", data_pb2.EQ, "abcdef")),
    }
    refused = await _refused(
        stub.Delete(
            data_pb2.DeleteRequest(
                mode=ADMIN,
                target=data_pb2.Target(table="sized"),
                filter=on("code", data_pb2.EQ, "xyzzy"),
                require_affected=True,
            ),
            timeout=10,
        )
    )

    assert found == {
        "varchar EQ": [],
        "varchar NEQ": [1, 2],
        "varchar IN": [],
        "char EQ": [],
        "char EQ exact": [1],
        "numeric EQ": [],
        "numeric GT": [1, 2],
        "timestamp EQ": [],
        "array CONTAINS": [],
        "domain EQ": [],
    }
    assert refused.reason == "NO_ROWS_AFFECTED"  # 'xyz' was not deleted
    assert await ids(on("id", data_pb2.GT, 0)) == [1, 2]


async def test_function_arguments_keep_their_whole_value(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    """char and bit arguments are bpchar and varbit-like "bit" without a
    length, not char(1) and bit(1): nothing is cut on the way in."""
    response = await stub.Call(
        data_pb2.CallRequest(
            mode=ADMIN,
            function="spelled",
            args_json=json.dumps({"code": "abcdef", "flags": "1011"}),
        ),
        timeout=10,
    )

    assert json.loads(response.result_json) == "abcdef 1011"


async def test_half_of_a_composite_key_pins_nothing(
    stub: data_pb2_grpc.DataServiceStub,
) -> None:
    def where(**values: int) -> data_pb2.Filter:
        conditions = [
            data_pb2.Filter(
                condition=data_pb2.Condition(
                    column=name, op=data_pb2.EQ, value_json=str(value)
                )
            )
            for name, value in values.items()
        ]
        return data_pb2.Filter(all_of=data_pb2.FilterGroup(filters=conditions))

    async def select(where: data_pb2.Filter) -> Any:
        return await stub.Select(
            data_pb2.SelectRequest(
                mode=ADMIN, target=data_pb2.Target(table="seats"), filter=where
            ),
            timeout=10,
        )

    half = await select(where(org=1))
    whole = await select(where(org=1, seat=2))

    assert (len(json.loads(half.rows_json)), half.truncated) == (2, True)
    assert (json.loads(whole.rows_json), whole.truncated) == (
        [{"org": 1, "seat": 2}],
        False,
    )
