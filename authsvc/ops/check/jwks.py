"""The `jwks` rows: the JWKS answers with usable keys, and the issuer matches.

The one fetch is bounded by AUTHSVC_JWKS_TIMEOUT_SECONDS, as the server's is.
"""

from __future__ import annotations

import httpx

from authsvc import __version__
from authsvc.config import ISSUER_PATH, Settings
from authsvc.errors import KeysUnavailable
from authsvc.ops.check.deployment import Deployment
from authsvc.ops.check.results import Result, fail, pass_, warn
from authsvc.tokens import KeySet


async def check_jwks(deployment: Deployment) -> list[Result]:
    """The JWKS answers with usable keys, or the HS256 secret stands in."""
    settings = deployment.settings
    if settings is None:
        return []
    results = [_keys(settings, await _fetch_key_count(settings))]

    issuer = settings.issuer
    if settings.issuer_override is not None and settings.supabase_url is not None:
        expected = settings.supabase_url + ISSUER_PATH
        if settings.issuer_override != expected:
            results.append(
                warn(
                    "jwks.issuer",
                    f"AUTHSVC_ISSUER={issuer} differs from {expected}, the issuer "
                    "of SUPABASE_URL's tokens: those would be BAD_ISSUER",
                    "unset AUTHSVC_ISSUER unless your tokens carry that issuer",
                )
            )
            return results
    results.append(pass_("jwks.issuer", f"issuer {issuer}"))
    return results


async def _fetch_key_count(settings: Settings) -> int | str | None:
    """Usable keys in the JWKS, the reason it failed, or None when it is off."""
    url = settings.jwks_url
    if url is None:
        return None
    async with httpx.AsyncClient(
        timeout=settings.jwks_timeout_seconds,
        follow_redirects=False,
        headers={"user-agent": f"authsvc-check/{__version__}"},
    ) as http:
        keys = KeySet(
            url,
            http,
            ttl_seconds=settings.jwks_ttl_seconds,
            cooldown_seconds=0,
            timeout_seconds=settings.jwks_timeout_seconds,
        )
        try:
            await keys.refresh()
        except KeysUnavailable as exc:
            return exc.cause
        return keys.key_count


def _keys(settings: Settings, found: int | str | None) -> Result:
    url = settings.jwks_url
    if found is None:
        return pass_("jwks", "AUTHSVC_JWKS_URL=off; the HS256 secret verifies tokens")
    if isinstance(found, int) and found > 0:
        return pass_("jwks", f"{found} usable keys at {url}")

    hs256 = settings.jwt_secret is not None
    if found == 0:
        problem = f"the JWKS at {url} has no usable key"
        if hs256:
            # A project still on the legacy secret publishes an empty JWKS.
            return pass_("jwks", f"{problem}; SUPABASE_JWT_SECRET verifies HS256")
    else:
        problem = f"cannot fetch the JWKS at {url}: {found}"
    fix = (
        "check SUPABASE_URL (https://<ref>.supabase.co) and that this Machine can "
        "reach it; AUTHSVC_JWKS_URL overrides the address"
    )
    if hs256:
        return warn("jwks", f"{problem}; only HS256 tokens would verify", fix)
    return fail("jwks", f"{problem}: no token could verify", fix)
