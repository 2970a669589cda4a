"""The `secrets.*` rows: SUPABASE_URL, the JWT secret, fly.toml's `[env]`, callers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from authsvc.access import CallerSet, Scope
from authsvc.config import MIN_JWT_SECRET_CHARS, ConfigError, Settings
from authsvc.ops.check.deployment import Deployment, table, url_parts
from authsvc.ops.check.results import Result, fail, pass_, warn
from authsvc.server import load_callers

# Never to be written in fly.toml, which is committed with the code.
_SECRET_VARIABLES = frozenset(
    {"SUPABASE_JWT_SECRET", "DATABASE_URL", "DIRECT_URL", "AUTHSVC_CALLERS"}
)
# A JWT, a caller key, a Supabase secret API key, or a PEM block.
_SECRET_VALUE = re.compile(
    r"eyJ[\w-]+\.eyJ[\w-]+\.|\basvc_\w|\bsb_secret_\w|-----BEGIN [A-Z ]*KEY-----"
)


def check_secrets(deployment: Deployment) -> list[Result]:
    environ = deployment.environ
    results = [_supabase_url(environ)]

    secret = environ.get("SUPABASE_JWT_SECRET", "")
    if secret and len(secret) < MIN_JWT_SECRET_CHARS:
        results.append(
            fail(
                "secrets.jwt_secret",
                f"SUPABASE_JWT_SECRET (value hidden) is shorter than "
                f"{MIN_JWT_SECRET_CHARS} characters: not Supabase's JWT secret",
                "copy the legacy JWT secret from the dashboard (Settings, JWT Keys)",
            )
        )
    elif secret:
        results.append(
            pass_("secrets.jwt_secret", "SUPABASE_JWT_SECRET is set: HS256 verifies")
        )

    if deployment.fly is not None:
        results.append(_fly_env_secrets(deployment.fly))

    settings = deployment.settings
    if settings is not None:
        try:
            callers = load_callers(settings)
        except ConfigError as exc:
            results.append(
                fail(
                    "secrets.callers",
                    str(exc),
                    "correct the callers setting named above; `authsvc caller-key "
                    "--name APP` prints a key and its entry",
                )
            )
        else:
            results.extend(_callers(settings, callers))
    return results


def _supabase_url(environ: Mapping[str, str]) -> Result:
    url = environ.get("SUPABASE_URL", "").strip()
    if url:
        return pass_("secrets.supabase_url", f"SUPABASE_URL={url}")
    if environ.get("AUTHSVC_ISSUER") and environ.get("AUTHSVC_JWKS_URL"):
        return warn(
            "secrets.supabase_url",
            "SUPABASE_URL is not set; the issuer and JWKS URL are set by hand",
            "set SUPABASE_URL=https://<ref>.supabase.co unless tokens come from "
            "elsewhere",
        )
    return fail(
        "secrets.supabase_url",
        "SUPABASE_URL is not set: authsvc cannot know the issuer or the keys",
        "fly secrets set SUPABASE_URL=https://<ref>.supabase.co",
    )


def _fly_env_secrets(fly: Mapping[str, Any]) -> Result:
    """fly.toml is committed: its [env] must hold no secret (values never shown)."""
    env = table(fly.get("env"))
    found = sorted(
        str(name)
        for name, value in env.items()
        if name in _SECRET_VARIABLES or (isinstance(value, str) and _is_secret(value))
    )
    if found:
        return fail(
            "secrets.fly_env",
            f"fly.toml [env] holds secrets: {', '.join(found)}",
            "move them to `fly secrets set NAME=...` and rotate them: they are in "
            "the git history",
        )
    return pass_("secrets.fly_env", "fly.toml [env] holds no secrets")


def _is_secret(value: str) -> bool:
    if _SECRET_VALUE.search(value):
        return True
    parts = url_parts(value)
    return parts.scheme in ("postgres", "postgresql") and bool(parts.password)


def _callers(settings: Settings, callers: CallerSet) -> list[Result]:
    if not callers:
        results = [
            warn(
                "secrets.callers",
                "no callers: AUTHSVC_ALLOW_UNAUTHENTICATED=true lets any app that "
                "reaches the port verify tokens and query as a user",
                "configure AUTHSVC_CALLERS (`authsvc caller-key`) and unset "
                "AUTHSVC_ALLOW_UNAUTHENTICATED",
            )
        ]
    else:
        names = ", ".join(caller.name for caller in callers.callers)
        results = [pass_("secrets.callers", f"{len(callers)} callers: {names}")]

    if settings.db_allow_admin and settings.database_url is not None:
        admins = [c.name for c in callers.callers if Scope.DATA_ADMIN in c.scopes]
        if not admins:
            results.append(
                warn(
                    "secrets.admin",
                    "AUTHSVC_DB_ALLOW_ADMIN=true but no caller has data:admin",
                    "grant data:admin to the app that needs it, or unset "
                    "AUTHSVC_DB_ALLOW_ADMIN",
                )
            )
        else:
            results.append(
                pass_("secrets.admin", f"admin mode for: {', '.join(admins)}")
            )
    return results
