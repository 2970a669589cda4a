"""The `fly.*` rows: fly.toml's signals, timeouts, checks and ports match the server."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from authsvc.ops.check.deployment import Deployment, fly_env, table, tables
from authsvc.ops.check.results import Result, fail, pass_, warn
from authsvc.ops.http import LIVENESS_PATH, METRICS_PATH, READINESS_PATH

# What Fly uses when fly.toml says nothing.
FLY_DEFAULT_KILL_SIGNAL = "SIGINT"
FLY_DEFAULT_KILL_TIMEOUT_SECONDS = 5.0
# After the gRPC grace period the server still closes the pool and the HTTP
# client; Fly's SIGKILL must not cut that short.
KILL_TIMEOUT_MARGIN_SECONDS = 2.0

_HANDLED_SIGNALS = frozenset({"SIGINT", "SIGTERM"})  # see authsvc.server
_HEALTH_PATHS = (READINESS_PATH, LIVENESS_PATH)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def check_fly(deployment: Deployment) -> list[Result]:
    """Signals, timeouts, checks and ports in fly.toml match the server."""
    settings, fly = deployment.settings, deployment.fly
    if settings is None or fly is None:
        return []
    grpc_port = int(settings.listen_addr.rpartition(":")[2])
    ops = settings.metrics_host_port
    ops_port = ops[1] if ops is not None else None
    results = [
        _kill_signal(fly),
        _kill_timeout(fly, settings.shutdown_grace_seconds),
        _checks(fly, grpc_port, ops_port),
    ]
    services = _services(fly, grpc_port)
    if services is not None:
        results.append(services)
    if "metrics" in fly:
        results.append(_metrics(fly["metrics"], ops_port))
    return results


def check_listen(deployment: Deployment) -> list[Result]:
    """Both ports must be reachable from outside the Machine over IPv6: 6PN
    callers, Fly's checks and its Prometheus all come from there."""
    settings = deployment.settings
    if settings is None:
        return []
    results = [
        _reachable(
            deployment,
            "AUTHSVC_LISTEN_ADDR",
            settings.listen_addr,
            "other apps could not call it",
            "[::]:50051",
        )
    ]
    if settings.metrics_host_port is not None:
        results.append(
            _reachable(
                deployment,
                "AUTHSVC_METRICS_ADDR",
                settings.metrics_addr,
                "Fly's checks and metrics scraper could not reach it",
                "[::]:9091",
            )
        )
    return results


def _reachable(
    deployment: Deployment, name: str, address: str, consequence: str, fix: str
) -> Result:
    row = f"listen.{name.removeprefix('AUTHSVC_').lower()}"
    host = address.rpartition(":")[0].strip("[]")
    source = _source(deployment, name)
    if host == "localhost" or _is_ip(host, loopback=True):
        return fail(
            row,
            f"{name}={address}{source} is loopback only: {consequence}",
            f"set {name}={fix}",
        )
    if host == "0.0.0.0":  # noqa: S104 (the point is to flag it)
        return fail(
            row,
            f"{name}={address}{source} is IPv4 only, and Fly's private network "
            f"is IPv6: {consequence}",
            f"set {name}={fix} (dual-stack)",
        )
    return pass_(row, f"{name}={address}{source}")


def _is_ip(host: str, *, loopback: bool) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback is loopback
    except ValueError:
        return False


def _source(deployment: Deployment, name: str) -> str:
    """Where a value came from, so the fix lands in the right place."""
    if name not in deployment.environ:
        return " (the default)"
    if deployment.shell_names is not None and name in deployment.shell_names:
        return " (from the environment)"
    if name in fly_env(deployment.fly):
        return " (from fly.toml [env])"
    return ""


def _kill_signal(fly: Mapping[str, Any]) -> Result:
    signal = str(fly.get("kill_signal", FLY_DEFAULT_KILL_SIGNAL)).upper()
    if signal not in _HANDLED_SIGNALS:
        return fail(
            "fly.kill_signal",
            f"kill_signal = {signal}: authsvc drains only on SIGINT or SIGTERM",
            'set kill_signal = "SIGTERM" in fly.toml',
        )
    return pass_("fly.kill_signal", f"kill_signal = {signal}")


def _kill_timeout(fly: Mapping[str, Any], grace: float) -> Result:
    raw = fly.get("kill_timeout", FLY_DEFAULT_KILL_TIMEOUT_SECONDS)
    timeout = _seconds(raw)
    needed = grace + KILL_TIMEOUT_MARGIN_SECONDS
    if timeout is None:
        return fail(
            "fly.kill_timeout",
            f"kill_timeout = {raw!r} is not a duration",
            f"set kill_timeout = {int(needed) + 1} (seconds) in fly.toml",
        )
    if timeout <= needed:
        return fail(
            "fly.kill_timeout",
            f"kill_timeout is {timeout:g}s, not more than the {grace:g}s grace "
            f"(AUTHSVC_SHUTDOWN_GRACE_SECONDS) + {KILL_TIMEOUT_MARGIN_SECONDS:g}s: "
            "Fly would SIGKILL in-flight calls",
            f"set kill_timeout = {int(needed) + 1} in fly.toml, or lower "
            "AUTHSVC_SHUTDOWN_GRACE_SECONDS",
        )
    return pass_(
        "fly.kill_timeout", f"kill_timeout {timeout:g}s outlasts the {grace:g}s grace"
    )


def _checks(fly: Mapping[str, Any], grpc_port: int, ops_port: int | None) -> Result:
    """Machine checks must hit a port authsvc listens on, HTTP ones a health path."""
    checks = fly.get("checks", {})
    checks = checks if isinstance(checks, dict) else {}
    service_checks = [
        check
        for service in tables(fly.get("services"))
        for kind in ("tcp_checks", "http_checks")
        for check in tables(service.get(kind))
    ]
    service_checks += tables(table(fly.get("http_service")).get("checks"))
    if ops_port is not None:
        wanted = (
            f'[checks.ready] with type = "http", port = {ops_port}, '
            f'path = "{READINESS_PATH}"'
        )
        listens = f"gRPC on {grpc_port}, HTTP health on {ops_port} {READINESS_PATH}"
    else:
        wanted = f'[checks.grpc] with type = "tcp", port = {grpc_port}'
        listens = f"gRPC on {grpc_port} (AUTHSVC_METRICS_ADDR=off)"
    if not checks and not service_checks:
        return warn(
            "fly.checks",
            "no health checks: `fly deploy` cannot tell a Machine that never "
            "becomes ready",
            f"add {wanted}",
        )

    wrong = []
    for name, check in checks.items():
        check = table(check)
        kind, port, path = check.get("type"), check.get("port"), check.get("path")
        if kind == "tcp" and port in (grpc_port, ops_port):
            continue
        if kind == "http" and port == ops_port and path in _HEALTH_PATHS:
            continue
        wrong.append(f"checks.{name} ({kind} port {port} path {path})")
    if wrong:
        return fail(
            "fly.checks",
            f"{', '.join(wrong)} would never pass: authsvc listens {listens}",
            f"use {wanted}",
        )

    names = ", ".join(f"checks.{name}" for name in checks) or "service checks"
    if not any(table(check).get("type") == "http" for check in checks.values()):
        return pass_(
            "fly.checks",
            f"{names} (TCP sees only an open port; an HTTP check on "
            f"{READINESS_PATH} also waits for the keys)",
        )
    return pass_("fly.checks", names)


def _services(fly: Mapping[str, Any], grpc_port: int) -> Result | None:
    ports = [service.get("internal_port") for service in tables(fly.get("services"))]
    if "http_service" in fly:
        ports.append(table(fly["http_service"]).get("internal_port"))
    if not ports:
        return None
    wrong = [port for port in ports if port != grpc_port]
    if wrong:
        return fail(
            "fly.services",
            f"internal_port {', '.join(map(str, wrong))} is not the gRPC port "
            f"{grpc_port}: Fly's proxy would reach nothing",
            f"set internal_port = {grpc_port} (AUTHSVC_LISTEN_ADDR's port)",
        )
    return pass_("fly.services", f"internal_port {grpc_port} is the gRPC port")


def _metrics(metrics: Any, ops_port: int | None) -> Result:
    for entry in tables(metrics):
        port, path = entry.get("port"), entry.get("path", METRICS_PATH)
        if ops_port is None:
            return fail(
                "fly.metrics",
                f"[metrics] scrapes port {port}, but AUTHSVC_METRICS_ADDR=off",
                "remove [metrics] from fly.toml, or set AUTHSVC_METRICS_ADDR",
            )
        if port != ops_port or path != METRICS_PATH:
            return fail(
                "fly.metrics",
                f"[metrics] scrapes port {port} path {path}, but authsvc serves "
                f"port {ops_port} path {METRICS_PATH}",
                f'set port = {ops_port} and path = "{METRICS_PATH}" under [metrics]',
            )
    return pass_("fly.metrics", f"[metrics] scrapes port {ops_port} {METRICS_PATH}")


def _seconds(value: object) -> float | None:
    """A fly.toml duration: an integer of seconds, or a Go duration like "1m30s"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    parts = _DURATION_PART.findall(text)
    if "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
