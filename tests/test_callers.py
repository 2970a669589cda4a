"""Caller authentication and scopes, through real gRPC calls.

Each caller below holds different scopes; every RPC is called by every caller,
and the outcome must be exactly what the table says: OK, or
PERMISSION_DENIED/SCOPE_MISSING naming the scope that was missing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authsvc.access.keys import hash_key
from authsvc.v1 import auth_pb2, auth_pb2_grpc, data_pb2, data_pb2_grpc
from tests.conftest import Keys, Refusal, Running, StartServer
from tests.support.callers import TEST_CALLER_KEY, caller_channel, callers_toml
from tests.support.jwks_stub import JwksStub
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase
from tests.support.tokens import UID_A, es256, supabase_claims
from tests.test_data import _wait_data_serving, pooled
from tests.test_data import database as database  # the module's test database

KEYS = {
    name: f"asvc_{name}-key-for-tests-only-0123456789abcdef"
    for name in ("verifier", "reader", "writer", "readwrite", "reporter", "admin")
}
CALLERS = callers_toml(
    ("verifier", KEYS["verifier"], ["tokens:verify"]),
    ("reader", KEYS["reader"], ["data:read"]),
    ("writer", KEYS["writer"], ["data:write"]),
    ("readwrite", KEYS["readwrite"], ["data:read", "data:write"]),
    ("admin", KEYS["admin"], ["data:admin"]),
) + (
    "[callers.reporter]\n"
    f'key_hashes = ["{hash_key(KEYS["reporter"])}"]\n'
    'scopes = ["data:admin"]\n'
    'admin_tables = ["public.notes"]\n'
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED

ADMIN = data_pb2.Mode(admin=data_pb2.Admin())
ANON = data_pb2.Mode(anon=data_pb2.Anon())


@dataclass
class Stubs:
    auth: auth_pb2_grpc.AuthServiceStub
    data: data_pb2_grpc.DataServiceStub


Rpc = Callable[[Stubs, Keys], Awaitable[Any]]


def _user(keys: Keys) -> data_pb2.Mode:
    return data_pb2.Mode(user_token=es256(keys.ec1, supabase_claims(sub=UID_A)))


def _notes(**fields: Any) -> data_pb2.Target:
    return data_pb2.Target(table="notes", **fields)


def _id_is(value: int) -> data_pb2.Filter:
    return data_pb2.Filter(
        condition=data_pb2.Condition(column="id", op=data_pb2.EQ, value_json=str(value))
    )


# Every RPC (and mode) that exists, as one call that succeeds when allowed.
RPCS: dict[str, Rpc] = {
    "VerifyToken": lambda s, k: s.auth.VerifyToken(
        auth_pb2.VerifyTokenRequest(token=es256(k.ec1)), timeout=10
    ),
    "VerifyTokens": lambda s, k: s.auth.VerifyTokens(
        auth_pb2.VerifyTokensRequest(tokens=[es256(k.ec1)]), timeout=10
    ),
    "Select/user": lambda s, k: s.data.Select(
        data_pb2.SelectRequest(mode=_user(k), target=_notes()), timeout=10
    ),
    "Select/anon": lambda s, k: s.data.Select(
        data_pb2.SelectRequest(mode=ANON, target=_notes()), timeout=10
    ),
    "Select/admin notes": lambda s, k: s.data.Select(
        data_pb2.SelectRequest(mode=ADMIN, target=_notes(schema="public")),
        timeout=10,
    ),
    "Select/admin accounts": lambda s, k: s.data.Select(
        data_pb2.SelectRequest(mode=ADMIN, target=data_pb2.Target(table="accounts")),
        timeout=10,
    ),
    "Insert/user": lambda s, k: s.data.Insert(
        data_pb2.InsertRequest(
            mode=_user(k), target=_notes(), rows_json='{"body": "from a caller"}'
        ),
        timeout=10,
    ),
    "Update/user": lambda s, k: s.data.Update(
        data_pb2.UpdateRequest(
            mode=_user(k),
            target=_notes(),
            values_json='{"body": "x"}',
            filter=_id_is(-1),
        ),
        timeout=10,
    ),
    "Delete/user": lambda s, k: s.data.Delete(
        data_pb2.DeleteRequest(mode=_user(k), target=_notes(), filter=_id_is(-1)),
        timeout=10,
    ),
    "Upsert/admin notes": lambda s, k: s.data.Upsert(
        data_pb2.UpsertRequest(
            mode=ADMIN,
            target=_notes(),
            rows_json=json.dumps({"id": 1000, "owner": UID_A, "body": "kept"}),
            on_conflict=["id"],
        ),
        timeout=10,
    ),
    "Upsert/admin accounts": lambda s, k: s.data.Upsert(
        data_pb2.UpsertRequest(
            mode=ADMIN,
            target=data_pb2.Target(table="accounts"),
            rows_json='{"id": 1000, "email": "callers@example.com"}',
            on_conflict=["id"],
        ),
        timeout=10,
    ),
    "Call/user stable": lambda s, k: s.data.Call(
        data_pb2.CallRequest(mode=_user(k), function="whoami"), timeout=10
    ),
    "Call/user volatile": lambda s, k: s.data.Call(
        data_pb2.CallRequest(
            mode=_user(k),
            function="rename_then_sleep",
            args_json='{"new_body": "renamed", "seconds": 0}',
        ),
        timeout=10,
    ),
    "Call/admin": lambda s, k: s.data.Call(
        data_pb2.CallRequest(mode=ADMIN, function="whoami"), timeout=10
    ),
    "ReloadSchema": lambda s, k: s.data.ReloadSchema(
        data_pb2.ReloadSchemaRequest(mode=ADMIN), timeout=10
    ),
}

# Who may make each call; everyone else gets PERMISSION_DENIED for the scope.
ALLOWED: dict[str, tuple[set[str], str]] = {
    "VerifyToken": ({"verifier"}, "tokens:verify"),
    "VerifyTokens": ({"verifier"}, "tokens:verify"),
    "Select/user": ({"reader", "readwrite"}, "data:read"),
    "Select/anon": ({"reader", "readwrite"}, "data:read"),
    "Select/admin notes": ({"reporter", "admin"}, "data:admin"),
    "Select/admin accounts": ({"admin"}, "data:admin"),
    "Insert/user": ({"writer", "readwrite"}, "data:write"),
    "Update/user": ({"writer", "readwrite"}, "data:write"),
    "Delete/user": ({"writer", "readwrite"}, "data:write"),
    "Upsert/admin notes": ({"reporter", "admin"}, "data:admin"),
    "Upsert/admin accounts": ({"admin"}, "data:admin"),
    "Call/user stable": ({"reader", "readwrite"}, "data:read"),
    # Volatile: data:read to call at all, data:write because it may write.
    "Call/user volatile": ({"readwrite"}, "data:read|data:write"),
    "Call/admin": ({"admin"}, "data:admin"),
    "ReloadSchema": ({"reporter", "admin"}, "data:admin"),
}


@pytest.fixture
async def data_server(
    database: tuple[TestDatabase, PgBouncer], start_server: StartServer, jwks: JwksStub
) -> Running:
    db, bouncer = database
    server = await start_server(
        jwks,
        DATABASE_URL=pooled(bouncer, db),
        AUTHSVC_DB_ALLOW_ADMIN="true",
        AUTHSVC_CALLERS=CALLERS,
    )
    await _wait_data_serving(server.channel)
    return server


async def _outcome(
    target: str, key: str | None, rpc: Rpc, keys: Keys
) -> Refusal | None:
    async with caller_channel(target, key) as channel:
        stubs = Stubs(
            auth_pb2_grpc.AuthServiceStub(channel),
            data_pb2_grpc.DataServiceStub(channel),
        )
        try:
            await rpc(stubs, keys)
        except grpc.aio.AioRpcError as error:
            return Refusal.of(error)
    return None


async def test_every_caller_gets_exactly_what_its_scopes_allow_on_every_rpc(
    data_server: Running, keys: Keys
) -> None:
    assert set(RPCS) == set(ALLOWED)
    # Every RPC the services define is in the table (one row or more each).
    defined = {
        method.name
        for service in (auth_pb2.DESCRIPTOR, data_pb2.DESCRIPTOR)
        for svc in service.services_by_name.values()
        for method in svc.methods
    }
    assert defined == {name.split("/")[0] for name in RPCS}
    wrong = []
    for rpc_name, rpc in RPCS.items():
        allowed, scope = ALLOWED[rpc_name]
        for caller, key in KEYS.items():
            refusal = await _outcome(data_server.target, key, rpc, keys)
            if caller in allowed:
                if refusal is not None:
                    wrong.append(f"{rpc_name} as {caller}: refused {refusal}")
                continue
            if refusal is None:
                wrong.append(f"{rpc_name} as {caller}: allowed")
            elif (
                refusal.code,
                refusal.reason,
                refusal.metadata.get("caller"),
            ) != (PERMISSION_DENIED, "SCOPE_MISSING", caller) or refusal.metadata[
                "scope"
            ] not in scope.split("|"):
                wrong.append(f"{rpc_name} as {caller}: {refusal}")

    assert wrong == []


async def test_admin_narrowed_to_a_table_names_the_table_it_was_refused(
    data_server: Running, keys: Keys
) -> None:
    refusal = await _outcome(
        data_server.target, KEYS["reporter"], RPCS["Select/admin accounts"], keys
    )

    assert refusal is not None
    assert "public.accounts" in refusal.message
    assert KEYS["reporter"] not in refusal.message


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "CALLER_KEY_MISSING"),
        (
            (("authorization", "Bearer asvc_not-a-configured-key"),),
            "CALLER_KEY_INVALID",
        ),
        ((("authorization", f"Basic {TEST_CALLER_KEY}"),), "CALLER_KEY_INVALID"),
        ((("authorization", "Bearer "),), "CALLER_KEY_INVALID"),
        ((("authorization", f"bearer  {TEST_CALLER_KEY}x"),), "CALLER_KEY_INVALID"),
        ((("authorization", "Bearer " + "k" * 300),), "CALLER_KEY_INVALID"),
        (
            (
                ("authorization", f"Bearer {TEST_CALLER_KEY}"),
                ("authorization", f"Bearer {TEST_CALLER_KEY}"),
            ),
            "CALLER_KEY_INVALID",
        ),
    ],
    ids=["none", "unknown", "basic", "empty", "near-miss", "long", "twice"],
)
async def test_missing_or_unknown_keys_are_unauthenticated_for_every_service(
    data_server: Running, keys: Keys, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    async with grpc.aio.insecure_channel(data_server.target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        data = data_pb2_grpc.DataServiceStub(channel)
        calls = [
            auth.VerifyToken(
                auth_pb2.VerifyTokenRequest(token=es256(keys.ec1)),
                metadata=metadata,
                timeout=10,
            ),
            data.Select(
                data_pb2.SelectRequest(mode=ADMIN, target=_notes()),
                metadata=metadata,
                timeout=10,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            refusal = Refusal.of(caught.value)
            assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, reason)


async def test_the_case_of_the_scheme_does_not_matter(
    server: Running, keys: Keys
) -> None:
    response = await server.auth.VerifyToken(
        auth_pb2.VerifyTokenRequest(token=es256(keys.ec1)),
        metadata=(("authorization", f"bEaReR {TEST_CALLER_KEY}"),),
        timeout=10,
    )

    assert response.sub == UID_A


async def test_a_user_jwt_in_the_authorization_header_is_pointed_to_the_request(
    server: Running, keys: Keys
) -> None:
    token = es256(keys.ec1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.VerifyToken(
            auth_pb2.VerifyTokenRequest(token=token),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    refusal = Refusal.of(caught.value)

    assert (refusal.code, refusal.reason) == (UNAUTHENTICATED, "CALLER_KEY_INVALID")
    assert "request message" in refusal.message
    assert token not in refusal.message


async def test_health_and_reflection_need_no_key(server: Running) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        names = await _reflected_services(channel)

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "authsvc.v1.AuthService" in names


async def test_reflection_can_be_switched_off(
    start_server: StartServer, jwks: JwksStub
) -> None:
    running = await start_server(jwks, AUTHSVC_REFLECTION="false")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reflected_services(running.channel)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names |= {s.name for s in response.list_services_response.service}
    return names


async def test_unauthenticated_calls_when_allowed_may_verify_but_never_admin(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    running = await start_server(
        jwks, AUTHSVC_CALLERS="", AUTHSVC_ALLOW_UNAUTHENTICATED="true"
    )
    async with caller_channel(running.target, None) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        response = await stub.VerifyToken(
            auth_pb2.VerifyTokenRequest(token=es256(keys.ec1)), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.VerifyToken(
                auth_pb2.VerifyTokenRequest(token=es256(keys.ec1)),
                metadata=(("authorization", "Bearer asvc_unknown"),),
                timeout=10,
            )

    assert response.sub == UID_A
    # A key that is sent must still be a known one.
    assert Refusal.of(caught.value).reason == "CALLER_KEY_INVALID"


# Rotation and reload.


def _write(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)  # atomic, as a deploy tool would


async def _verify_with(target: str, key: str, keys: Keys) -> Refusal | None:
    return await _outcome(target, key, RPCS["VerifyToken"], keys)


async def _eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.1)


OLD_KEY = "asvc_old-key-for-rotation-tests-0123456789"
NEW_KEY = "asvc_new-key-for-rotation-tests-0123456789"


async def test_rotation_old_and_new_keys_then_only_new_without_a_restart(
    start_server: StartServer, jwks: JwksStub, keys: Keys, tmp_path: Path
) -> None:
    callers_file = tmp_path / "callers.toml"
    _write(callers_file, callers_toml(("app", OLD_KEY, ["tokens:verify"])))
    running = await start_server(
        jwks, AUTHSVC_CALLERS="", AUTHSVC_CALLERS_FILE=str(callers_file)
    )
    assert await _verify_with(running.target, OLD_KEY, keys) is None
    assert await _verify_with(running.target, NEW_KEY, keys) is not None

    # Step 1: both keys listed; the app switches to the new one.
    both = callers_toml(("app", OLD_KEY, ["tokens:verify"])).replace(
        'key_hashes = ["',
        'key_hashes = ["' + hash_key(NEW_KEY) + '", "',
    )
    _write(callers_file, both)

    async def new_key_works() -> bool:
        return await _verify_with(running.target, NEW_KEY, keys) is None

    await _eventually(new_key_works)
    assert await _verify_with(running.target, OLD_KEY, keys) is None

    # Step 2: the old key is removed.
    _write(callers_file, callers_toml(("app", NEW_KEY, ["tokens:verify"])))

    async def old_key_refused() -> bool:
        refusal = await _verify_with(running.target, OLD_KEY, keys)
        return refusal is not None and refusal.reason == "CALLER_KEY_INVALID"

    await _eventually(old_key_refused)
    assert await _verify_with(running.target, NEW_KEY, keys) is None


async def test_a_broken_callers_file_keeps_the_callers_in_use(
    start_server: StartServer,
    jwks: JwksStub,
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    callers_file = tmp_path / "callers.toml"
    _write(callers_file, callers_toml(("app", OLD_KEY, ["tokens:verify"])))
    running = await start_server(
        jwks, AUTHSVC_CALLERS="", AUTHSVC_CALLERS_FILE=str(callers_file)
    )

    _write(callers_file, "[callers.app\nkey_hashes = oops")
    assert await running.server.reload_callers() is False
    _write(callers_file, '[callers.app]\nkey_hashes = ["asvc_a-raw-key"]\nscopes=[]')
    assert await running.server.reload_callers() is False

    assert await _verify_with(running.target, OLD_KEY, keys) is None
    assert "callers not reloaded" in caplog.text
    assert "a-raw-key" not in caplog.text


# Limits per caller.


async def test_concurrency_limit_refuses_the_call_past_it_and_spares_other_callers(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    limited = "asvc_limited-caller-key-0123456789abcdef"
    callers = callers_toml(
        ("limited", limited, ["tokens:verify"]), max_concurrent="2"
    ) + callers_toml(("other", OLD_KEY, ["tokens:verify"]))
    running = await start_server(jwks, AUTHSVC_CALLERS=callers)
    # A token for a rotated-in key makes each call wait on the slow JWKS.
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 1.5
    slow = [
        asyncio.create_task(
            _outcome(running.target, limited, RPCS["VerifyToken"], _ec2_keys(keys))
        )
        for _ in range(2)
    ]
    await asyncio.sleep(0.5)

    past_limit = await _verify_with(running.target, limited, keys)
    other = await _verify_with(running.target, OLD_KEY, keys)
    at_limit = await asyncio.gather(*slow)

    assert at_limit == [None, None]
    assert past_limit is not None
    assert (past_limit.code, past_limit.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_CONCURRENT_CALLS",
    )
    assert past_limit.metadata["limit"] == "2"
    assert other is None
    # The slots came back.
    assert await _verify_with(running.target, limited, keys) is None


def _ec2_keys(keys: Keys) -> Keys:
    return Keys(ec1=keys.ec2, ec2=keys.ec2, rsa1=keys.rsa1, ec_evil=keys.ec_evil)


async def test_rate_limit_allows_the_burst_refuses_one_more_and_spares_others(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    limited = "asvc_rated-caller-key-0123456789abcdef"
    callers = callers_toml(
        ("rated", limited, ["tokens:verify"]), requests_per_second="5"
    ) + callers_toml(("other", OLD_KEY, ["tokens:verify"]))
    running = await start_server(jwks, AUTHSVC_CALLERS=callers)

    async with caller_channel(running.target, limited) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        request = auth_pb2.VerifyTokenRequest(token=es256(keys.ec1))
        for _ in range(5):
            await stub.VerifyToken(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.VerifyToken(request, timeout=10)
        refusal = Refusal.of(caught.value)
        other = await _verify_with(running.target, OLD_KEY, keys)

        await asyncio.sleep(int(refusal.metadata["retry_after_ms"]) / 1000 + 0.05)
        await stub.VerifyToken(request, timeout=10)

    assert (refusal.code, refusal.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert 0 < int(refusal.metadata["retry_after_ms"]) <= 200
    assert other is None


# The network allowlist.


@pytest.mark.parametrize(
    ("networks", "allowed"),
    [("127.0.0.0/8", True), ("fdaa::/16,127.0.0.1/32", True), ("fdaa::/16", False)],
)
async def test_network_allowlist_checks_the_peer_but_not_health(
    start_server: StartServer,
    jwks: JwksStub,
    keys: Keys,
    networks: str,
    allowed: bool,
) -> None:
    running = await start_server(jwks, AUTHSVC_ALLOWED_NETWORKS=networks)

    refusal = await _verify_with(running.target, TEST_CALLER_KEY, keys)
    health = await running.health.Check(health_pb2.HealthCheckRequest(), timeout=5)

    if allowed:
        assert refusal is None
    else:
        assert refusal is not None
        assert (refusal.code, refusal.reason) == (
            PERMISSION_DENIED,
            "NETWORK_NOT_ALLOWED",
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("networks", "allowed"), [("::1/128", True), ("fdaa::/16", False)]
)
async def test_network_allowlist_matches_ipv6_peers(
    start_server: StartServer,
    jwks: JwksStub,
    keys: Keys,
    networks: str,
    allowed: bool,
) -> None:
    running = await start_server(
        jwks, AUTHSVC_LISTEN_ADDR="[::1]:0", AUTHSVC_ALLOWED_NETWORKS=networks
    )
    target = f"[::1]:{running.server.port}"

    refusal = await _verify_with(target, TEST_CALLER_KEY, keys)

    if allowed:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.reason == "NETWORK_NOT_ALLOWED"
