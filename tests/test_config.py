"""Settings from the environment: defaults, derivations and refusals."""

from __future__ import annotations

import pytest

from authsvc.config import ConfigError, Settings

PROJECT = "https://abcdefghijklmnopqrst.supabase.co"


def test_issuer_and_jwks_url_derive_from_supabase_url() -> None:
    settings = Settings.from_environ({"SUPABASE_URL": PROJECT + "/"})

    assert settings.issuer == PROJECT + "/auth/v1"
    assert settings.jwks_url == PROJECT + "/auth/v1/.well-known/jwks.json"
    assert settings.listen_addr == "[::]:50051"
    assert settings.audiences == ("authenticated",)


def test_overrides_and_lists_are_read() -> None:
    settings = Settings.from_environ(
        {
            "AUTHSVC_ISSUER": "https://auth.example.com/auth/v1",
            "AUTHSVC_JWKS_URL": "http://supabase-kong.internal:8000/jwks.json",
            "AUTHSVC_AUDIENCES": "authenticated, partners,",
            "AUTHSVC_LISTEN_ADDR": "fly-local-6pn:50051",
        }
    )

    assert settings.issuer == "https://auth.example.com/auth/v1"
    assert settings.jwks_url == "http://supabase-kong.internal:8000/jwks.json"
    assert settings.audiences == ("authenticated", "partners")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, "SUPABASE_URL"),
        ({"AUTHSVC_ISSUER": "https://a.example/auth/v1"}, "AUTHSVC_JWKS_URL"),
        ({"SUPABASE_URL": "http://abcdefghijklmnopqrst.supabase.co"}, "SUPABASE_URL"),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_JWKS_URL": "ftp://x/jwks.json"},
            "AUTHSVC_JWKS_URL",
        ),
        ({"SUPABASE_URL": PROJECT, "AUTHSVC_JWKS_URL": "off"}, "SUPABASE_JWT_SECRET"),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_LISTEN_ADDR": "127.0.0.1:99999"},
            "AUTHSVC_LISTEN_ADDR",
        ),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_LISTEN_ADDR": "50051"},
            "AUTHSVC_LISTEN_ADDR",
        ),
        ({"SUPABASE_URL": PROJECT, "AUTHSVC_AUDIENCES": " , "}, "AUTHSVC_AUDIENCES"),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_JWKS_TTL_SECONDS": "-1"},
            "AUTHSVC_JWKS_TTL_SECONDS",
        ),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_TLS_CERT_FILE": "/c.pem"},
            "AUTHSVC_TLS_KEY_FILE",
        ),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_TLS_CLIENT_CA_FILE": "/ca.pem"},
            "AUTHSVC_TLS_CERT_FILE",
        ),
        (
            {
                "SUPABASE_URL": PROJECT,
                "AUTHSVC_CALLERS": "[callers]",
                "AUTHSVC_CALLERS_FILE": "/callers.toml",
            },
            "AUTHSVC_CALLERS_FILE",
        ),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_ALLOWED_NETWORKS": "fdaa::/16,10.0.0"},
            "AUTHSVC_ALLOWED_NETWORKS",
        ),
        (
            {"SUPABASE_URL": PROJECT, "AUTHSVC_DB_MAX_CONDITIONS": "0"},
            "AUTHSVC_DB_MAX_CONDITIONS",
        ),
    ],
    ids=[
        "nothing",
        "issuer-without-jwks",
        "remote-plain-http",
        "ftp-jwks",
        "jwks-off-without-secret",
        "port-out-of-range",
        "no-host",
        "no-audience",
        "negative-ttl",
        "tls-cert-without-key",
        "client-ca-without-tls",
        "callers-twice",
        "bad-cidr",
        "zero-conditions",
    ],
)
def test_unusable_configuration_is_refused_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(environ)

    assert named in str(caught.value)


def test_secret_is_never_in_the_error_or_the_summary() -> None:
    secret = "short-secret-value"
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"SUPABASE_URL": PROJECT, "SUPABASE_JWT_SECRET": secret})
    good = Settings.from_environ(
        {"SUPABASE_URL": PROJECT, "SUPABASE_JWT_SECRET": "s" * 40}
    )

    assert secret not in str(caught.value)
    assert "s" * 40 not in repr(good.summary())
    assert "s" * 40 not in repr(good)


def test_misspelled_authsvc_variables_are_reported() -> None:
    environ = {
        "SUPABASE_URL": PROJECT,
        "AUTHSVC_LEEWAY_SECOND": "5",
        "AUTHSVC_DEV_DIR": "dev-keys",
        "OTHER": "1",
    }

    assert Settings.unknown_variables(environ) == ["AUTHSVC_LEEWAY_SECOND"]


@pytest.mark.parametrize(
    ("dsn", "pooled"),
    [
        ("postgresql://u:p@aws-0-eu-west-1.pooler.supabase.com:6543/postgres", True),
        ("postgresql://u@127.0.0.1:6432/db?pgbouncer=true", True),
        ("postgresql://u@db.abcdefghijklmnopqrst.supabase.co:5432/postgres", False),
        ("postgresql://u@127.0.0.1/db?sslmode=require", False),
    ],
)
def test_transaction_pooler_is_detected_by_port_or_flag(dsn: str, pooled: bool) -> None:
    from authsvc.data.pool import behind_transaction_pooler

    assert behind_transaction_pooler(dsn) is pooled


def test_pgbouncer_flag_is_not_sent_to_the_server_and_passwords_are_not_logged() -> (
    None
):
    from authsvc.data.pool import driver_dsn, redacted

    dsn = "postgresql://u:hunter2@127.0.0.1:6432/db?pgbouncer=true&sslmode=disable"

    assert driver_dsn(dsn) == "postgresql://u:hunter2@127.0.0.1:6432/db?sslmode=disable"
    assert "hunter2" not in redacted(dsn)


def test_user_role_allowlist_never_admits_service_role() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(
            {
                "SUPABASE_URL": PROJECT,
                "AUTHSVC_DB_USER_ROLES": "authenticated,service_role",
            }
        )

    assert "AUTHSVC_DB_USER_ROLES" in str(caught.value)


def test_database_url_is_a_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(
            {"SUPABASE_URL": PROJECT, "DATABASE_URL": "mysql://u:pw@h/db"}
        )

    assert "DATABASE_URL" in str(caught.value)
    assert "pw" not in str(caught.value)
