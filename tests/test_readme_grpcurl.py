"""The README's grpcurl examples, run as written against a real `authsvc dev`.

A fenced ```sh block is tested when the line right above it is MARKER. Each
such block is split into shell commands, and each command is run by bash
against `authsvc dev` (its local issuer, and its embedded Postgres with the
demo `notes` table), started with HOME in a temporary directory so that
`~/.local/share/authsvc/dev/caller-key` and `authsvc token` are that server's.
The only substitutions are the address (`localhost:50051` becomes the
server's ephemeral port), `.venv/bin/` (this interpreter's scripts directory)
and the placeholders `asvc_…` and `eyJ…` (the dev caller key and a dev token).

Variable assignments such as `KEY=$(…)` are evaluated first, in README order,
and their values given to every command, so each command is its own test. A
command whose line ends in `# refused: REASON` must fail with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool

from authsvc.dev.issuer import DEV_ISSUER, DEV_USER_ID
from authsvc.v1 import auth_pb2, data_pb2  # noqa: F401  (fills the descriptor pool)

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tested by tests/test_readme_grpcurl.py -->"
BIN_DIR = Path(sys.executable).parent
SHOWN_TARGET = "localhost:50051"
KEY_PLACEHOLDER = "asvc_…"
TOKEN_PLACEHOLDER = "eyJ…"
DEV_START_TIMEOUT_SECONDS = 60
DEV_STOP_TIMEOUT_SECONDS = 15
COMMAND_TIMEOUT_SECONDS = 20
GRPCURL_RPC_ERROR_BASE = 64  # grpcurl exits 64 + the gRPC status code
STATUS_CODES = {"Unauthenticated": 16, "InvalidArgument": 3, "PermissionDenied": 7}
KINDS_REQUIRED = {"list", "describe", "VerifyToken", "Select", "Check"}

_ASSIGNMENT = re.compile(r"([A-Z_][A-Z0-9_]*)=(\$\(.*\)|\S*)")
_REFUSED = re.compile(r"#\s*refused:\s*([A-Z_]+)\s*$")


@dataclass(frozen=True)
class Command:
    section: str
    line: int
    text: str

    @property
    def assignment(self) -> str | None:
        """The variable this command only sets, if that is all it does."""
        match = _ASSIGNMENT.fullmatch(self.text)
        return match.group(1) if match else None

    @property
    def refused_reason(self) -> str | None:
        match = _REFUSED.search(self.text)
        return match.group(1) if match else None

    @property
    def words(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        while words and _ASSIGNMENT.fullmatch(words[0]):
            words.pop(0)
        return words

    @property
    def kind(self) -> str:
        """list, describe, authsvc-verify, or the gRPC method's short name."""
        words = self.words
        program = Path(words[0]).name
        if program == "authsvc":
            return f"authsvc-{words[1]}"
        if program != "grpcurl":
            return program
        for verb in ("list", "describe"):
            if verb in words:
                return verb
        return words[-1].rsplit("/", 1)[-1]

    def option(self, name: str) -> str:
        words = self.words
        return words[words.index(name) + 1]


def _blocks(readme: str) -> list[tuple[str, int, list[str]]]:
    """Tested ```sh blocks: (section heading, first line number, lines)."""
    lines = readme.splitlines()
    blocks = []
    section = ""
    for number, line in enumerate(lines):
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.strip() == MARKER:
            if lines[number + 1] != "```sh":
                raise AssertionError(
                    f"README.md:{number + 1}: {MARKER} must stand right above a ```sh fence"
                )
            end = lines.index("```", number + 2)
            blocks.append((section, number + 3, lines[number + 2 : end]))
    return blocks


def _commands(readme: str) -> list[Command]:
    """Every shell command of the tested blocks, continuation lines joined."""
    commands = []
    for section, first, lines in _blocks(readme):
        pending: list[str] = []
        for offset, line in enumerate(lines):
            pending.append(line)
            text = "\n".join(pending)
            if line.endswith("\\") or not _quotes_closed(text):
                continue
            if text.strip():
                start = first + offset - len(pending) + 1
                commands.append(Command(section, start, text.strip()))
            pending = []
        if pending:
            raise AssertionError(f"README.md:{first}: a command never ends")
    return commands


def _quotes_closed(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def _ids(commands: list[Command]) -> list[str]:
    """`section-N-kind`: stable while other parts of the README change."""
    ids = []
    seen: dict[str, int] = {}
    for command in commands:
        section = re.sub(r"[^a-z0-9]+", "-", command.section.lower()).strip("-")
        seen[section] = seen.get(section, 0) + 1
        ids.append(f"{section}-{seen[section]}-{command.kind}")
    return ids


COMMANDS = _commands(README.read_text(encoding="utf-8"))
ASSIGNMENTS = [c for c in COMMANDS if c.assignment]
RUNS = [c for c in COMMANDS if not c.assignment]


# The README itself.


def test_every_local_grpcurl_block_in_the_readme_is_tested() -> None:
    """A new example with `.venv/bin/grpcurl` gets MARKER above it, or fails here."""
    lines = README.read_text(encoding="utf-8").splitlines()
    untested = []
    for number, line in enumerate(lines):
        if line != "```sh":
            continue
        end = lines.index("```", number + 1)
        body = "\n".join(lines[number + 1 : end])
        if ".venv/bin/grpcurl" in body and lines[number - 1].strip() != MARKER:
            untested.append(number + 1)

    assert untested == [], f"README.md lines {untested}: put {MARKER} above them"


def test_tested_blocks_show_list_describe_verify_select_and_health() -> None:
    kinds = {command.kind for command in RUNS}

    assert kinds >= KINDS_REQUIRED
    assert any(command.refused_reason for command in RUNS)


# The commands, against a running server.


@dataclass(frozen=True)
class DevServer:
    port: int
    environ: dict[str, str]
    key: str
    token: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
async def dev_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[DevServer]:
    """`authsvc dev` on an ephemeral port, with HOME in a temporary directory."""
    home = tmp_path_factory.mktemp("home")
    port = _free_port()
    environ = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)}
    logs = home / "authsvc-dev.log"
    with logs.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(BIN_DIR / "authsvc"),
            "dev",
            env={
                **environ,
                "AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{port}",
                "AUTHSVC_METRICS_ADDR": "127.0.0.1:0",
            },
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        try:
            banner = await asyncio.wait_for(
                process.stdout.readuntil(b"Ctrl-C stops the server."),
                DEV_START_TIMEOUT_SECONDS,
            )
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            raise AssertionError(
                "authsvc dev did not start:\n" + logs.read_text(errors="replace")
            ) from exc
        if b"embedded database has a table" not in banner:
            raise AssertionError(
                "authsvc dev started without its embedded database:\n"
                + logs.read_text(errors="replace")
            )
        token = re.search(rb"\beyJ[\w-]+\.[\w-]+\.[\w-]+", banner)
        assert token is not None, banner
        key_file = home / ".local/share/authsvc/dev/caller-key"
        yield DevServer(
            port, environ, key_file.read_text().strip(), token.group().decode()
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), DEV_STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()


def _localized(text: str, server: DevServer) -> str:
    """The README's text with this server's address, scripts and credentials."""
    return (
        text.replace(SHOWN_TARGET, f"127.0.0.1:{server.port}")
        .replace(".venv/bin/", f"{BIN_DIR}/")
        .replace(KEY_PLACEHOLDER, server.key)
        .replace(TOKEN_PLACEHOLDER, server.token)
    )


async def _bash(text: str, environ: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        text,
        env=environ,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def shell_environ(
    dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment after the README's assignments (KEY, TOKEN), in order."""
    environ = dict(dev_server.environ)
    cwd = tmp_path_factory.mktemp("cwd")
    for command in ASSIGNMENTS:
        name = command.assignment
        assert name is not None
        script = f'{_localized(command.text, dev_server)}\nprintf %s "${name}"'
        code, out, err = await _bash(script, environ, cwd)
        shown = f"README.md:{command.line}: {command.text}\n{err}"
        assert code == 0, shown
        assert out, shown
        environ[name] = out
    return environ


@pytest.mark.parametrize("command", RUNS, ids=_ids(RUNS))
async def test_readme_command_runs_and_prints_what_the_readme_says(
    command: Command,
    dev_server: DevServer,
    shell_environ: dict[str, str],
    tmp_path: Path,
) -> None:
    text = _localized(command.text, dev_server)

    code, out, err = await _bash(text, shell_environ, tmp_path)

    shown = f"README.md:{command.line}: {command.text}\nstdout: {out}\nstderr: {err}"
    reason = command.refused_reason
    if reason is not None:
        _check_refused(code, out + err, reason, shown)
        return
    assert code == 0, shown
    checks = {
        "list": _check_list,
        "describe": _check_describe,
        "VerifyToken": _check_claims,
        "authsvc-verify": _check_claims,
        "Select": _check_select,
        "Call": _check_call,
        "Check": _check_health,
    }
    assert command.kind in checks, (
        f"README.md:{command.line}: no check for {command.kind!r} commands;"
        " add one in tests/test_readme_grpcurl.py"
    )
    checks[command.kind](Command(command.section, command.line, text), out, shown)


def _check_refused(code: int, output: str, reason: str, shown: str) -> None:
    status = re.search(r"Code: (\w+)", output)
    assert status is not None, shown
    assert code == GRPCURL_RPC_ERROR_BASE + STATUS_CODES[status.group(1)], shown
    assert f'"reason":"{reason}"' in output.replace(" ", ""), shown
    assert '"domain":"authsvc"' in output.replace(" ", ""), shown


def _check_list(command: Command, out: str, shown: str) -> None:
    services = set(out.split())

    assert services >= {
        "authsvc.v1.AuthService",
        "authsvc.v1.DataService",
        "grpc.health.v1.Health",
    }, shown


def _check_describe(command: Command, out: str, shown: str) -> None:
    symbol = command.option("describe")
    pool = descriptor_pool.Default()
    try:
        names = [f.name for f in pool.FindMessageTypeByName(symbol).fields]
        kind = "message"
    except KeyError:
        names = [m.name for m in pool.FindServiceByName(symbol).methods]
        kind = "service"

    assert out.startswith(f"{symbol} is a {kind}:"), shown
    assert all(re.search(rf"\b{name}\b", out) for name in names), shown


def _check_claims(command: Command, out: str, shown: str) -> None:
    claims = json.loads(out)

    assert claims["sub"] == DEV_USER_ID, shown
    assert claims["issuer"] == DEV_ISSUER, shown
    assert claims["algorithm"] == "ES256", shown


def _check_health(command: Command, out: str, shown: str) -> None:
    assert json.loads(out) == {"status": "SERVING"}, shown


def _check_call(command: Command, out: str, shown: str) -> None:
    """whoami() runs as the mode's role, with the user's id under user mode."""
    request: dict[str, Any] = json.loads(command.option("-d"))
    result = json.loads(json.loads(out)["result_json"])

    if "user_token" in request["mode"]:
        assert result == {"role": "authenticated", "uid": DEV_USER_ID}, shown
    else:
        assert result["role"] in {"service_role", "anon"}, shown


def _check_select(command: Command, out: str, shown: str) -> None:
    """The rows have the columns asked for, the mode's RLS, order and limit."""
    request: dict[str, Any] = json.loads(command.option("-d"))
    response = json.loads(out)
    rows = json.loads(response["rows_json"])
    owners = {row["owner"] for row in rows if "owner" in row}
    order = request.get("order", [])

    assert rows, shown
    assert response["affected"] == str(len(rows)), shown
    assert all(list(row) == request["columns"] for row in rows), shown
    if "user_token" in request["mode"]:
        assert owners <= {DEV_USER_ID}, shown
    if "admin" in request["mode"] and "owner" in request["columns"]:
        assert len(owners) > 1, shown
    assert len(rows) <= request.get("limit", len(rows)), shown
    for key in order:
        values = [row[key["column"]] for row in rows]
        assert values == sorted(values, reverse=key.get("descending", False)), shown
