"""The deployment files (fly.toml, Dockerfile) agree with the code and stay private.

No Docker engine or Fly account is needed: the files are parsed as text, and
the Dockerfile is linted with hadolint (installed with the dev extras).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from authsvc.config import (
    DEFAULT_LISTEN_ADDR,
    DEFAULT_METRICS_ADDR,
    DEFAULT_SHUTDOWN_GRACE_SECONDS,
)
from authsvc.ops.http import METRICS_PATH, READINESS_PATH
from authsvc.ops.regions import SUPABASE_TO_FLY_REGION

ROOT = Path(__file__).parents[1]
FLY_TOML = ROOT / "fly.toml"
DOCKERFILE = ROOT / "Dockerfile"

SECRET_NAME_PARTS = ("SECRET", "KEY", "PASSWORD", "TOKEN")
HANDLED_KILL_SIGNALS = {"SIGINT", "SIGTERM"}  # see authsvc.server
LISTEN_HOSTS = {"[::]", "fly-local-6pn"}
HADOLINT_TIMEOUT_SECONDS = 60


FLYCAST_TOML = ROOT / "fly.flycast.toml"
VARIANTS = {"6pn": FLY_TOML, "flycast": FLYCAST_TOML}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def fly(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each shipped fly.toml variant; every check below holds for both."""
    with VARIANTS[request.param].open("rb") as file:
        config = tomllib.load(file)
    config["_variant"] = request.param
    return config


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def seconds(value: object) -> float:
    """fly.toml durations: an integer of seconds, or a string like "15s"/"1m"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)(s|m)?", value.strip())
        if match:
            return float(match[1]) * (60 if match[2] == "m" else 1)
    raise AssertionError(f"not a duration: {value!r}")


DEFAULT_PORT = split_addr(DEFAULT_LISTEN_ADDR)[1]
METRICS_PORT = split_addr(DEFAULT_METRICS_ADDR)[1]


# fly.toml


def test_fly_toml_exposes_no_public_ports(fly: dict[str, Any]) -> None:
    # [http_service] always publishes through the proxy with HTTP handlers.
    assert "http_service" not in fly
    if fly["_variant"] == "6pn":
        assert "services" not in fly
        return
    # Flycast: one raw TCP service on the gRPC port (a private IP is the
    # operator's `fly ips allocate-v6 --private`, documented in the file).
    (service,) = fly["services"]
    assert service["internal_port"] == DEFAULT_PORT
    assert [port["handlers"] for port in service["ports"]] == [[]]
    assert service["tcp_checks"]


def test_fly_toml_env_holds_no_secrets(fly: dict[str, Any]) -> None:
    env = fly.get("env", {})
    assert "SUPABASE_JWT_SECRET" not in env
    secret_looking = [
        name for name in env if any(part in name.upper() for part in SECRET_NAME_PARTS)
    ]
    assert secret_looking == [], "use `fly secrets set` for these"


def test_fly_toml_listens_on_the_default_grpc_port_on_6pn(
    fly: dict[str, Any],
) -> None:
    host, port = split_addr(fly["env"]["AUTHSVC_LISTEN_ADDR"])
    assert port == DEFAULT_PORT
    assert host in LISTEN_HOSTS


def test_fly_toml_kill_signal_is_one_authsvc_drains_on(fly: dict[str, Any]) -> None:
    assert fly["kill_signal"] in HANDLED_KILL_SIGNALS


def test_fly_toml_kill_timeout_outlasts_the_shutdown_grace(
    fly: dict[str, Any],
) -> None:
    assert seconds(fly["kill_timeout"]) > DEFAULT_SHUTDOWN_GRACE_SECONDS


def test_fly_toml_primary_region_sits_beside_a_supabase_region(
    fly: dict[str, Any],
) -> None:
    assert fly["primary_region"] in set(SUPABASE_TO_FLY_REGION.values())


def test_fly_toml_checks_readiness_on_the_ops_port(fly: dict[str, Any]) -> None:
    checks = fly.get("checks", {}).values()
    assert any(
        check.get("type") == "http"
        and check.get("port") == METRICS_PORT
        and check.get("path") == READINESS_PATH
        for check in checks
    )


def test_fly_toml_metrics_are_scraped_from_the_ops_port(fly: dict[str, Any]) -> None:
    assert fly["metrics"] == {"port": METRICS_PORT, "path": METRICS_PATH}
    assert split_addr(fly["env"]["AUTHSVC_METRICS_ADDR"])[1] == METRICS_PORT


def test_fly_toml_builds_from_the_dockerfile(fly: dict[str, Any]) -> None:
    assert (ROOT / fly["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()


# Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), one per FROM."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)

    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        elif not stages:
            continue  # ARG before the first FROM
        stages[-1].append((instruction, arguments.strip()))
    return stages


def last(stage: list[tuple[str, str]], instruction: str) -> str | None:
    found = [arguments for name, arguments in stage if name == instruction]
    return found[-1] if found else None


def base_image(stage: list[tuple[str, str]]) -> str:
    return stage[0][1].split()[0]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    user = last(final, "USER")
    assert user is not None, "the final stage must set USER"
    name = user.split(":")[0]
    assert name not in {"root", "0"}


def test_dockerfile_starts_authsvc_serve_in_exec_form() -> None:
    final = dockerfile_stages()[-1]
    # An ENTRYPOINT would turn CMD into its arguments.
    assert last(final, "ENTRYPOINT") is None
    cmd = last(final, "CMD")
    assert cmd is not None
    assert cmd.startswith("["), "shell form would put /bin/sh in front of authsvc"
    assert json.loads(cmd) == ["authsvc", "serve"]


def test_dockerfile_exposes_the_default_grpc_port() -> None:
    final = dockerfile_stages()[-1]
    exposed = (last(final, "EXPOSE") or "").split()
    assert f"{DEFAULT_PORT}" in exposed or f"{DEFAULT_PORT}/tcp" in exposed


def test_dockerfile_stages_share_one_pinned_slim_python_base() -> None:
    # The venv copied between stages links to the base image's interpreter.
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    bases = {base_image(stage) for stage in (stages[0], stages[-1])}
    assert len(bases) == 1
    (base,) = bases
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim-\w+(@sha256:[0-9a-f]{64})?", base)


def hadolint_path() -> Path | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return beside_python
    found = shutil.which("hadolint")
    return Path(found) if found else None


def test_dockerfile_passes_hadolint_without_findings() -> None:
    hadolint = hadolint_path()
    if hadolint is None:
        # CI installs it with the dev extras; a missing linter must not pass.
        pytest.fail("hadolint not found: pip install -e '.[dev]'")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=HADOLINT_TIMEOUT_SECONDS,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""
