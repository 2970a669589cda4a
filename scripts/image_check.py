"""`make image-check`: the Dockerfile's build steps, proven without Docker.

It does what the image build and `fly deploy` would, in a temporary directory
outside the source tree:

1. copy the build context the Dockerfile's build stage COPYs, less what
   .dockerignore leaves out (so stale stubs in authsvc/v1 never get in);
2. `pip wheel --no-deps` it, as the build stage does, which generates the gRPC
   stubs from protos/ in pip's isolated build environment;
3. install the wheel into a fresh virtualenv (no dev extras), as /opt/venv;
4. start `authsvc serve` from that virtualenv, in an empty working directory,
   with a minimal environment that needs no network (HS256 secret, JWKS off,
   one caller made with the installed `authsvc caller-key`);
5. probe it with the virtualenv's own Python: gRPC health is SERVING and a
   VerifyToken call with the caller key succeeds; then GET /readyz is 200 and
   /metrics counts that call;
6. send SIGTERM and expect exit 0 with "stopped" logged.

It prints the wheel size, the installed virtualenv size and the time from the
process start to /readyz answering 200.

This file uses only the standard library, so any Python 3.11+ can run it; the
probe in step 5 is this same file run by the new virtualenv's Python in
isolated mode (`-I`), so it can import only what the wheel installed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

PIP_TIMEOUT_SECONDS = 300
COMMAND_TIMEOUT_SECONDS = 30
READY_TIMEOUT_SECONDS = 30
READY_POLL_SECONDS = 0.05
HTTP_TIMEOUT_SECONDS = 2
PROBE_TIMEOUT_SECONDS = 5
# Longer than authsvc's default shutdown grace period (8 s), like fly.toml's
# kill_timeout.
EXIT_TIMEOUT_SECONDS = 15

SUPABASE_URL = "https://imagecheckimagecheck.supabase.co"
ISSUER = f"{SUPABASE_URL}/auth/v1"
JWT_SECRET_BYTES = 20  # 40 hex characters; authsvc wants at least 32
CALLER_NAME = "image-check"
# Secrets reach the probe in its environment, never on a command line.
CALLER_KEY_VARIABLE = "AUTHSVC_CALLER_KEY"
SECRET_VARIABLE = "SUPABASE_JWT_SECRET"  # noqa: S105 (a variable name)
STUB_MODULE = "authsvc/v1/auth_pb2.py"


class CheckFailed(Exception):
    """A step did not do what the image needs; the message says which."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory"
    )
    parser.add_argument("--probe", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return _probe(args.probe)

    work = Path(tempfile.mkdtemp(prefix="authsvc-image-check-"))
    try:
        _check(work)
    except CheckFailed as exc:
        print(f"image-check: FAILED: {exc}", file=sys.stderr)
        print(f"image-check: files kept in {work}", file=sys.stderr)
        return 1
    if args.keep:
        print(f"image-check: files kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _check(work: Path) -> None:
    _warn_on_python_mismatch()

    context = work / "src"
    sources = _build_stage_sources(DOCKERFILE.read_text())
    _copy_context(sources, _ignore_patterns(DOCKERIGNORE), context)
    _step(f"copied the build context: {' '.join(sources)}")

    # The build stage's RUN, less --no-cache-dir: that only keeps the image
    # small, and pip's cache makes a second run here faster.
    started = time.monotonic()
    wheels = work / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), "."],
        cwd=context,
        timeout=PIP_TIMEOUT_SECONDS,
    )
    (wheel,) = wheels.glob("*.whl")
    _check_wheel(wheel)
    _step(
        f"built {wheel.name}: {_kib(wheel.stat().st_size)} "
        f"in {time.monotonic() - started:.1f} s"
    )

    started = time.monotonic()
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=work,
        timeout=PIP_TIMEOUT_SECONDS,
    )
    _check_installed(python, wheel, cwd=work)
    _step(
        f"installed into a fresh virtualenv: {_mib(_disk_usage(venv))} (du) "
        f"in {time.monotonic() - started:.1f} s"
    )

    run_dir = work / "run"
    run_dir.mkdir()
    ready_seconds = _serve_and_probe(venv, run_dir)

    print(
        "image-check: OK"
        f" wheel={_kib(wheel.stat().st_size)}"
        f" venv={_mib(_disk_usage(venv))}"
        f" ready_seconds={ready_seconds:.2f}"
    )


def _warn_on_python_mismatch() -> None:
    match = re.search(r"^FROM python:(\d+)\.(\d+)", DOCKERFILE.read_text(), re.M)
    if match and tuple(map(int, match.groups())) != sys.version_info[:2]:
        print(
            f"image-check: warning: the image uses Python {match[1]}.{match[2]}, "
            f"this check runs {sys.version_info[0]}.{sys.version_info[1]}",
            file=sys.stderr,
        )


def _build_stage_sources(dockerfile: str) -> list[str]:
    """What the first stage COPYs from the build context."""
    sources: list[str] = []
    stages = 0
    for line in _instructions(dockerfile):
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages += 1
        elif word.upper() == "COPY" and stages == 1:
            parts = rest.split()
            if any(part.startswith("--from") for part in parts):
                continue
            sources.extend(p for p in parts[:-1] if not p.startswith("--"))
    if not sources:
        raise CheckFailed(f"{DOCKERFILE} has no COPY in its build stage")
    return sources


def _instructions(dockerfile: str) -> list[str]:
    """Dockerfile instructions, one a line, continuations joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our .dockerignore: a pattern matches the path
    from the context root segment by segment, and `**` spans any segments."""
    parts = relative.split("/")
    return any(_match(pattern.split("/"), parts) for pattern in patterns)


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and _match(pattern[1:], parts[1:])
    )


def _copy_context(sources: list[str], patterns: list[str], context: Path) -> None:
    context.mkdir()
    for source in sources:
        origin = ROOT / source
        if not origin.exists():
            raise CheckFailed(f"the Dockerfile copies {source}, which does not exist")
        if origin.is_file():
            shutil.copy2(origin, context / origin.name)
            continue

        def skip(directory: str, names: list[str]) -> set[str]:
            base = Path(directory).relative_to(ROOT).as_posix()
            return {name for name in names if _ignored(f"{base}/{name}", patterns)}

        shutil.copytree(origin, context / origin.relative_to(ROOT), ignore=skip)


def _check_wheel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    if STUB_MODULE not in names:
        raise CheckFailed(f"{wheel.name} lacks the generated {STUB_MODULE}")
    stray = [name for name in names if name.startswith(("tests/", "protos/"))]
    if stray:
        raise CheckFailed(f"{wheel.name} carries files it should not: {stray[:5]}")


def _check_installed(python: Path, wheel: Path, cwd: Path) -> None:
    """authsvc imports from the virtualenv, and no dev extra got installed."""
    metadata = _wheel_metadata(wheel)
    dev_only = sorted(
        {
            re.split(r"[\s\[<>=!~;]", line.partition(":")[2].strip())[0]
            for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" in line
        }
    )
    report = _run(
        [str(python), "-I", "-c", _INSTALLED_REPORT, *dev_only], cwd=cwd
    ).stdout
    found = json.loads(report)
    if not Path(found["authsvc"]).is_relative_to(python.parents[1]):
        raise CheckFailed(f"authsvc was imported from {found['authsvc']}")
    if found["dev"]:
        raise CheckFailed(f"dev-only packages were installed: {found['dev']}")


_INSTALLED_REPORT = """\
import importlib.metadata, json, sys
import authsvc
def installed(name):
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
print(json.dumps({
    "authsvc": authsvc.__file__,
    "dev": [name for name in sys.argv[1:] if installed(name)],
}))
"""


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode()


def _serve_and_probe(venv: Path, run_dir: Path) -> float:
    """Start authsvc, probe it, stop it; return the seconds until /readyz 200."""
    bin_dir = venv / "bin"
    made = _run(
        [str(bin_dir / "authsvc"), "caller-key", "--name", CALLER_NAME], run_dir
    )
    key = re.search(r"\basvc_[\w-]+", made.stderr)
    if key is None:
        raise CheckFailed("`authsvc caller-key` printed no key")
    secret = secrets.token_hex(JWT_SECRET_BYTES)
    grpc_port, ops_port = _free_port(), _free_port()
    env = {
        # As the image's ENV: the virtualenv first on PATH, unbuffered output.
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "SUPABASE_URL": SUPABASE_URL,
        SECRET_VARIABLE: secret,
        "AUTHSVC_JWKS_URL": "off",
        "AUTHSVC_CALLERS": made.stdout,
        "AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{grpc_port}",
        "AUTHSVC_METRICS_ADDR": f"127.0.0.1:{ops_port}",
    }
    ops = f"http://127.0.0.1:{ops_port}"

    logs, errors = run_dir / "stdout.log", run_dir / "stderr.log"
    with logs.open("wb") as out, errors.open("wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(  # noqa: S603 (our own command, no shell)
            [str(bin_dir / "authsvc"), "serve"],
            cwd=run_dir,
            env=env,
            stdout=out,
            stderr=err,
        )
        try:
            _wait_ready(process, f"{ops}/readyz", logs, errors)
            ready_seconds = time.monotonic() - started
            _step(f"serving: /readyz 200 after {ready_seconds:.2f} s from start")

            probe = [
                str(bin_dir / "python"),
                "-I",
                str(Path(__file__).resolve()),
                "--probe",
                f"127.0.0.1:{grpc_port}",
            ]
            secrets_env = {CALLER_KEY_VARIABLE: key.group(), SECRET_VARIABLE: secret}
            _step(_run(probe, run_dir, env={**env, **secrets_env}).stdout.strip())
            _check_ops(ops)
            _step("/healthz 200, /metrics counts the call in authsvc_rpcs_total")

            process.send_signal(signal.SIGTERM)
            code = process.wait(EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(
                f"authsvc still running {EXIT_TIMEOUT_SECONDS} s after SIGTERM"
            ) from exc
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    output = logs.read_text() + errors.read_text()
    if code != 0:
        raise CheckFailed(f"exit code {code} after SIGTERM; output:\n{output}")
    # The logs are one JSON object a line on stdout (json.loads fails if not).
    messages = [json.loads(line)["message"] for line in logs.read_text().splitlines()]
    if "stopped" not in messages:
        raise CheckFailed(f"no 'stopped' event after SIGTERM; output:\n{output}")
    _step(f"SIGTERM: exit 0 with 'stopped' logged ({len(messages)} JSON log lines)")
    return ready_seconds


def _wait_ready(process: subprocess.Popen[bytes], url: str, *outputs: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed(
                f"authsvc exited with {process.returncode} before it was ready; "
                f"output:\n{''.join(path.read_text() for path in outputs)}"
            )
        if _get(url)[0] == 200:
            return
        time.sleep(READY_POLL_SECONDS)
    raise CheckFailed(
        f"{url} did not answer 200 within {READY_TIMEOUT_SECONDS} s; "
        f"output:\n{''.join(path.read_text() for path in outputs)}"
    )


def _check_ops(ops: str) -> None:
    status, _ = _get(f"{ops}/healthz")
    if status != 200:
        raise CheckFailed(f"/healthz answered {status}")
    status, body = _get(f"{ops}/metrics")
    counted = re.search(
        r'^authsvc_rpcs_total\{(?=[^}]*method="VerifyToken")'
        rf'(?=[^}}]*caller="{CALLER_NAME}")(?=[^}}]*code="OK")[^}}]*\}} 1\.0$',
        body,
        re.M,
    )
    if status != 200 or counted is None:
        raise CheckFailed(f"/metrics ({status}) does not count the call:\n{body}")


def _get(url: str) -> tuple[int | None, str]:
    """The status and body of a GET; None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310 (a loopback URL we built)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


def _probe(target: str) -> int:
    """Run by the new virtualenv's Python: health, then one VerifyToken call."""
    key, secret = os.environ[CALLER_KEY_VARIABLE], os.environ[SECRET_VARIABLE]
    import grpc
    import jwt
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import authsvc
    from authsvc.v1 import auth_pb2, auth_pb2_grpc

    if not Path(authsvc.__file__).is_relative_to(sys.prefix):
        raise CheckFailed(f"the probe imported authsvc from {authsvc.__file__}")
    now = int(time.time())
    token = jwt.encode(
        {
            "sub": "00000000-0000-0000-0000-00000000c0de",
            "iss": ISSUER,
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + 60,
        },
        secret,
        algorithm="HS256",
    )

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_SECONDS
        )
        claims = auth_pb2_grpc.AuthServiceStub(channel).VerifyToken(
            auth_pb2.VerifyTokenRequest(token=token),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=PROBE_TIMEOUT_SECONDS,
        )

    status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    if status != "SERVING" or claims.algorithm != "HS256":
        raise CheckFailed(f"health {status}, VerifyToken algorithm {claims.algorithm}")
    print(f"gRPC health {status}; VerifyToken OK ({claims.algorithm}, caller key)")
    return 0


def _run(
    command: list[str],
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with everything it printed."""
    try:
        result = subprocess.run(  # noqa: S603 (our own commands, no shell)
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(command)} took over {timeout} s") from exc
    if result.returncode != 0:
        raise CheckFailed(
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _disk_usage(path: Path) -> int:
    """Bytes on disk, as `du -s` counts them (hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for entry in [path, *path.rglob("*")]:
        info = entry.lstat()
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    return total


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB"


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.0f} MiB"


def _step(message: str) -> None:
    print(f"image-check: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
