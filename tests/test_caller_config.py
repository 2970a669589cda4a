"""The caller TOML: what is refused, and what a parsed caller may do."""

from __future__ import annotations

from typing import Any

import pytest

from authsvc.access import CallerConfigError, CallerSet, Gate, Scope
from authsvc.access.keys import generate_key, hash_key
from authsvc.errors import PermissionDenied, ResourceExhausted

KEY = generate_key()
HASH = hash_key(KEY)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[callers.a\n", "not valid TOML"),
        ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        (
            f'[callers.unauthenticated]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n',
            "reserved",
        ),
        (
            f'[callers.{KEY}]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n',
            "asvc_…",
        ),
        (
            f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n{KEY} = 1\n',
            "asvc_…",
        ),
        (
            f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n'
            "requests_per_second = 1e-320\n",
            "requests_per_second",
        ),
        (
            '[callers.a]\nscopes = ["tokens:verify"]\n',
            "neither key_hashes nor tls_names",
        ),
        (f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = []\n', "scopes"),
        (f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:all"]\n', "scopes"),
        (
            f'[callers.a]\nkey_hashes = ["{KEY}"]\nscopes = ["data:read"]\n',
            "not its hash",
        ),
        ('[callers.a]\nkey_hashes = ["sha256:abc"]\nscopes = ["data:read"]\n', "64"),
        (
            f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n'
            f'[callers.b]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n',
            "share a key hash",
        ),
        (
            f'[callers."Bad Name"]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n',
            "caller name",
        ),
        (
            f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\nscope = 1\n',
            "scope",
        ),
        (
            f'[callers.a]\nkey_hashes = ["{HASH}"]\nscopes = ["data:read"]\n'
            "max_concurrent = 0\n",
            "max_concurrent",
        ),
    ],
    ids=[
        "toml",
        "nested-too-deeply",
        "reserved-name",
        "key-as-name",
        "key-as-field",
        "tiny-rate",
        "no-identity",
        "no-scopes",
        "unknown-scope",
        "raw-key",
        "short-hash",
        "shared-hash",
        "bad-name",
        "unknown-field",
        "zero-concurrency",
    ],
)
def test_unusable_caller_configuration_is_refused_saying_where(
    text: str, expected: str
) -> None:
    with pytest.raises(CallerConfigError) as caught:
        CallerSet.parse(text)

    assert expected in str(caught.value)
    assert KEY not in str(caught.value)


def test_keys_are_found_by_hash_and_narrowed_admin_covers_only_its_targets() -> None:
    other = generate_key()
    callers = CallerSet.parse(
        f'[callers.reports]\nkey_hashes = ["{HASH}", "{hash_key(other)}"]\n'
        'scopes = ["data:admin"]\nadmin_tables = ["invoices", "billing.plans"]\n'
    )

    caller = callers.by_key(KEY)
    assert caller is not None
    assert callers.by_key(other) is caller
    assert callers.by_key(KEY + "x") is None
    caller.require_admin_table("public", "invoices")
    caller.require_admin_table("billing", "plans")
    with pytest.raises(PermissionDenied):
        caller.require_admin_table("public", "plans")
    # Narrowed to tables: no function at all.
    with pytest.raises(PermissionDenied):
        caller.require_admin_function("public", "invoices")
    with pytest.raises(PermissionDenied):
        caller.require(Scope.DATA_READ)


def test_empty_configuration_is_no_callers() -> None:
    assert len(CallerSet.parse("")) == 0


def test_a_reload_that_changes_limits_keeps_counting_calls_in_flight() -> None:
    def config(max_concurrent: int) -> CallerSet:
        return CallerSet.parse(
            f'[callers.app]\nkey_hashes = ["{HASH}"]\nscopes = ["tokens:verify"]\n'
            f"max_concurrent = {max_concurrent}\n"
        )

    gate = Gate(
        config(2),
        allow_unauthenticated=False,
        networks=(),
        default_max_concurrent=0,
        default_rate=0,
    )
    header = [f"Bearer {KEY}"]

    def admit() -> Any:
        return gate.admit(authorization=header, peer="ipv4:127.0.0.1:1", tls_names=())

    with admit():
        gate.replace(config(1))
        # The call admitted before the reload still holds the only slot.
        with pytest.raises(ResourceExhausted), admit():
            pass
    with admit():
        pass
