"""What the checks look at: the environment, the settings and fly.toml.

`load_deployment` reads them as the server would run with them, fly.toml's
`[env]` filling in what the environment lacks (as Fly does on a Machine).
Problems reading either become the `config` and `fly.toml` rows of
`check_config`, never an exception. `table`, `tables` and `url_parts` read
fly.toml's tables and the settings' URLs leniently for the other checks.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from authsvc.config import ConfigError, Settings
from authsvc.ops.check.results import Result, fail, pass_, warn

# Supabase's default pooler "Pool Size" (server connections per user and
# database) on Nano to Small computes; see the package docstring.
DEFAULT_POOL_BUDGET = 15
# `fly deploy` gives an app two Machines in its primary region by default.
DEFAULT_MACHINES = 2


@dataclass(frozen=True)
class Deployment:
    """What the checks look at; `settings` is None when they cannot be read."""

    environ: Mapping[str, str]
    settings: Settings | None
    config_error: str | None
    fly: Mapping[str, Any] | None
    fly_path: Path
    fly_error: str | None
    machines: int
    pool_budget: int
    # The names the environment itself set (the rest came from [env]).
    shell_names: frozenset[str] | None = None


def load_deployment(
    environ: Mapping[str, str],
    *,
    fly_toml: str | Path,
    machines: int | None = None,
    pool_budget: int = DEFAULT_POOL_BUDGET,
) -> Deployment:
    """Read fly.toml and the settings; problems become rows, never raise."""
    fly_path = Path(fly_toml)
    fly: dict[str, Any] | None = None
    fly_error = None
    try:
        with fly_path.open("rb") as file:
            fly = tomllib.load(file)
    except FileNotFoundError:
        fly_error = "not found"
    except OSError as exc:
        fly_error = f"cannot be read: {exc}"
    except tomllib.TOMLDecodeError as exc:
        fly_error = f"is not valid TOML: {exc}"

    merged = {**fly_env(fly), **environ}
    settings = None
    config_error = None
    try:
        settings = Settings.from_environ(merged)
    except ConfigError as exc:
        config_error = str(exc)

    if machines is None:
        machines = max(DEFAULT_MACHINES, _min_machines_running(fly))
    return Deployment(
        environ=merged,
        settings=settings,
        config_error=config_error,
        fly=fly,
        fly_path=fly_path,
        fly_error=fly_error,
        machines=machines,
        pool_budget=pool_budget,
        shell_names=frozenset(environ),
    )


def check_config(deployment: Deployment) -> list[Result]:
    results = []
    if deployment.config_error is not None:
        results.append(
            fail(
                "config",
                f"authsvc serve would refuse to start: {deployment.config_error}",
                "correct the setting named above; checks that need the settings "
                "were skipped",
            )
        )
    else:
        results.append(pass_("config", "the settings are valid"))
    unknown = Settings.unknown_variables(deployment.environ)
    if unknown:
        results.append(
            warn(
                "config.unknown",
                f"ignored, not an authsvc setting: {', '.join(unknown)}",
                "correct the spelling (the README lists every setting) or remove them",
            )
        )

    path = deployment.fly_path
    if deployment.fly_error == "not found":
        results.append(
            warn(
                "fly.toml",
                f"{path} not found: the fly.toml checks were skipped",
                "run in the app's directory or pass --fly-toml PATH",
            )
        )
    elif deployment.fly_error is not None:
        results.append(
            fail(
                "fly.toml",
                f"{path} {deployment.fly_error}",
                "fix the file; `fly config validate` explains Fly's view of it",
            )
        )
    else:
        results.append(pass_("fly.toml", f"read {path}"))
    return results


def fly_env(fly: Mapping[str, Any] | None) -> dict[str, str]:
    """fly.toml's [env] as the Machine sees it: every value a string."""
    env = table((fly or {}).get("env"))
    values = {}
    for name, value in env.items():
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            values[name] = str(value)
    return values


def _min_machines_running(fly: Mapping[str, Any] | None) -> int:
    fly = fly or {}
    services = [*tables(fly.get("services")), table(fly.get("http_service"))]
    counts = [service.get("min_machines_running", 0) for service in services]
    return max((count for count in counts if isinstance(count, int)), default=0)


def table(value: Any) -> dict[str, Any]:
    """A TOML table, or an empty one where fly.toml has something else."""
    return value if isinstance(value, dict) else {}


def tables(value: Any) -> list[dict[str, Any]]:
    """An array of tables (or one table) as a list; anything else is dropped."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def url_parts(url: str) -> SplitResult:
    try:
        return urlsplit(url.strip())
    except ValueError:
        return urlsplit("")
