"""`authsvc dev`: the real server, pointed at a local issuer, plus a quick-start."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from authsvc.access import Scope
from authsvc.access.keys import generate_key, hash_key
from authsvc.config import Settings
from authsvc.dev import dev_directory
from authsvc.dev.database import EmbeddedPostgres, EmbeddedPostgresError
from authsvc.dev.issuer import DEV_ISSUER, DevIssuer, serve_jwks
from authsvc.server import AuthsvcServer, wait_for_stop_signal

logger = logging.getLogger(__name__)

DEV_LISTEN_ADDR = "localhost:50051"
DEV_METRICS_ADDR = "localhost:9091"
OTHER_USER_ID = "33333333-3333-3333-3333-333333333333"
DEV_CALLER = "dev"
CALLER_KEY_FILE = "caller-key"


async def run_dev(environ: Mapping[str, str]) -> None:
    """Start the local issuer and the server; print a token and how to use it."""
    issuer = DevIssuer(dev_directory(environ))
    if issuer.created:
        logger.info("created dev signing key path=%s", issuer.key_file)
    else:
        logger.info("using dev signing key path=%s", issuer.key_file)

    jwks_runner, jwks_url = await serve_jwks(issuer)
    logger.info("dev jwks serving url=%s", jwks_url)
    overrides = {"AUTHSVC_ISSUER": DEV_ISSUER, "AUTHSVC_JWKS_URL": jwks_url}
    caller_key = None
    if not environ.get("AUTHSVC_CALLERS") and not environ.get("AUTHSVC_CALLERS_FILE"):
        caller_key = dev_caller_key(issuer.directory)
        overrides["AUTHSVC_CALLERS"] = dev_callers(caller_key)
    # Dev mode may run with admin mode on: loopback only, unless asked.
    overrides.setdefault(
        "AUTHSVC_LISTEN_ADDR", environ.get("AUTHSVC_LISTEN_ADDR", DEV_LISTEN_ADDR)
    )
    overrides.setdefault(
        "AUTHSVC_METRICS_ADDR",
        environ.get("AUTHSVC_METRICS_ADDR", DEV_METRICS_ADDR),
    )
    embedded = None
    if not environ.get("DATABASE_URL"):
        embedded = EmbeddedPostgres(issuer.directory)
        try:
            overrides["DATABASE_URL"] = await embedded.start()
            # Local demo data only: admin mode is how the quick-start compares.
            overrides["AUTHSVC_DB_ALLOW_ADMIN"] = "true"
        except EmbeddedPostgresError as exc:
            logger.warning("no embedded database, DataService is off: %s", exc)
            embedded = None

    server = AuthsvcServer(Settings.from_environ({**environ, **overrides}))
    try:
        port = await server.start()
        token = issuer.mint(extra={"org_id": "org_demo"})
        print(
            quick_start(token, port, caller_key, demo_data=embedded is not None),
            flush=True,
        )
        await wait_for_stop_signal(on_reload=server.reload_callers)
        await server.stop()
    finally:
        await jwks_runner.cleanup()
        if embedded is not None:
            await embedded.stop()


def dev_caller_key(directory: Path) -> str:
    """The dev caller's key, kept beside the dev signing key across runs."""
    path = directory / CALLER_KEY_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key


def dev_callers(key: str) -> str:
    """One caller, `dev`, with every scope."""
    scopes = ", ".join(f'"{scope.value}"' for scope in Scope)
    return (
        f'[callers.{DEV_CALLER}]\nkey_hashes = ["{hash_key(key)}"]\n'
        f"scopes = [{scopes}]\n"
    )


def quick_start(
    token: str, port: int, caller_key: str | None, *, demo_data: bool
) -> str:
    bin_dir = _shown_bin_dir()
    target = f"localhost:{port}"
    request = shlex.quote(f'{{"token": "{token}"}}')
    header = "-H 'authorization: Bearer <your key>' "
    key_option = "--key '<your key>' "
    lines = ["", f"authsvc dev is ready on {target} (issuer {DEV_ISSUER})."]
    if caller_key is None:
        lines += [
            "Callers come from your AUTHSVC_CALLERS(_FILE), which replace the dev "
            "caller: put one of your keys where <your key> is.",
            "",
        ]
    else:
        header = f"-H 'authorization: Bearer {caller_key}' "
        key_option = f"--key {caller_key} "
        lines += [
            f"Calls need a caller key; the dev caller ({DEV_CALLER}, every scope) has:",
            "",
            caller_key,
            "",
        ]
    lines += [
        "A token for the dev user, valid for one hour:",
        "",
        token,
        "",
        "Verify it with grpcurl:",
        f"  {bin_dir}grpcurl -plaintext {header}-d {request} {target} "
        "authsvc.v1.AuthService/VerifyToken",
        "or with authsvc's own client:",
        f"  {bin_dir}authsvc verify --target {target} {key_option}'{token}'",
        "Mint another (see --help for claims):",
        f"  {bin_dir}authsvc token --sub {OTHER_USER_ID} --email someone@example.com",
        "",
    ]
    if demo_data:
        select = '"target": {"table": "notes"}, "columns": ["owner", "body"]'
        admin = shlex.quote(f'{{"mode": {{"admin": {{}}}}, {select}}}')
        user = shlex.quote(f'{{"mode": {{"user_token": "{token}"}}, {select}}}')
        lines += [
            "The embedded database has a table `notes` with row-level security.",
            "Every row, as admin (service role):",
            f"  {bin_dir}grpcurl -plaintext {header}-d {admin} {target} "
            "authsvc.v1.DataService/Select",
            "Only the dev user's rows, as the dev user (RLS applies):",
            f"  {bin_dir}grpcurl -plaintext {header}-d {user} {target} "
            "authsvc.v1.DataService/Select",
            "",
        ]
    return "\n".join([*lines, "Ctrl-C stops the server.", ""])


def _shown_bin_dir() -> str:
    """The scripts directory as a user would type it, or '' if on PATH."""
    bin_dir = Path(sys.executable).parent
    try:
        return f"{bin_dir.relative_to(Path.cwd())}/"
    except ValueError:
        return f"{bin_dir}/"
