"""The `region` row: authsvc runs in the Fly region beside the Supabase project."""

from __future__ import annotations

from authsvc.ops.check.deployment import Deployment, url_parts
from authsvc.ops.check.pooler import POOLER_HOST
from authsvc.ops.check.results import Result, fail, pass_, warn
from authsvc.ops.regions import SUPABASE_TO_FLY_REGION


def check_region(deployment: Deployment) -> list[Result]:
    """The Fly region beside the project's, read from the pooler's host name."""
    environ = deployment.environ
    host = url_parts(environ.get("DATABASE_URL", "")).hostname or ""
    match = POOLER_HOST.fullmatch(host)
    if match is None:
        where = f"the database host {host}" if host else "DATABASE_URL (not set)"
        return [
            warn(
                "region",
                f"cannot tell the Supabase region from {where}",
                "compare the project's region (Supabase dashboard, Settings) with "
                "primary_region by hand, using the table in the README",
            )
        ]
    supabase_region = match["region"]
    expected = SUPABASE_TO_FLY_REGION.get(supabase_region)
    if expected is None:
        return [
            warn(
                "region",
                f"Supabase region {supabase_region} has no Fly region on record",
                "pick the nearest Fly region (`fly platform regions`) as "
                "primary_region",
            )
        ]

    fly_region, source = environ.get("FLY_REGION"), "FLY_REGION"
    if not fly_region and deployment.fly is not None:
        fly_region, source = deployment.fly.get("primary_region"), "primary_region"
    if not fly_region:
        return [
            warn(
                "region",
                f"Supabase is in {supabase_region} but neither FLY_REGION nor "
                "fly.toml's primary_region says where authsvc runs",
                f'set primary_region = "{expected}" in fly.toml',
            )
        ]
    if fly_region != expected:
        return [
            fail(
                "region",
                f"{source}={fly_region}, but Supabase {supabase_region} sits beside "
                f"Fly {expected}: every query and JWKS fetch would cross regions",
                f'set primary_region = "{expected}" in fly.toml and move the '
                f"Machines there (`fly scale count {deployment.machines} "
                f"--region {expected}`)",
            )
        ]
    return [
        pass_(
            "region",
            f"Supabase {supabase_region} and Fly {fly_region} ({source}) are "
            "neighbours",
        )
    ]
