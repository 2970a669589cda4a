"""`authsvc dev`: the real server, pointed at a local issuer, plus a quick-start."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from authsvc.config import Settings
from authsvc.dev import dev_directory
from authsvc.dev.issuer import DEV_ISSUER, DevIssuer, serve_jwks
from authsvc.server import AuthsvcServer, wait_for_stop_signal

logger = logging.getLogger(__name__)


async def run_dev(environ: Mapping[str, str]) -> None:
    """Start the local issuer and the server; print a token and how to use it."""
    issuer = DevIssuer(dev_directory(environ))
    if issuer.created:
        logger.info("created dev signing key path=%s", issuer.key_file)
    else:
        logger.info("using dev signing key path=%s", issuer.key_file)

    jwks_runner, jwks_url = await serve_jwks(issuer)
    logger.info("dev jwks serving url=%s", jwks_url)
    settings = Settings.from_environ(
        {**environ, "AUTHSVC_ISSUER": DEV_ISSUER, "AUTHSVC_JWKS_URL": jwks_url}
    )
    server = AuthsvcServer(settings)
    try:
        port = await server.start()
        print(quick_start(issuer.mint(extra={"org_id": "org_demo"}), port), flush=True)
        await wait_for_stop_signal()
        await server.stop()
    finally:
        await jwks_runner.cleanup()


def quick_start(token: str, port: int) -> str:
    bin_dir = _shown_bin_dir()
    target = f"localhost:{port}"
    request = shlex.quote(f'{{"token": "{token}"}}')
    return "\n".join(
        [
            "",
            f"authsvc dev is ready on {target} (issuer {DEV_ISSUER}).",
            "A token for the dev user, valid for one hour:",
            "",
            token,
            "",
            "Verify it with grpcurl:",
            f"  {bin_dir}grpcurl -plaintext -d {request} {target} "
            "authsvc.v1.AuthService/VerifyToken",
            "or with authsvc's own client:",
            f"  {bin_dir}authsvc verify --target {target} '{token}'",
            "Mint another (see --help for claims):",
            f"  {bin_dir}authsvc token --email someone@example.com",
            "",
            "Ctrl-C stops the server.",
            "",
        ]
    )


def _shown_bin_dir() -> str:
    """The scripts directory as a user would type it, or '' if on PATH."""
    bin_dir = Path(sys.executable).parent
    try:
        return f"{bin_dir.relative_to(Path.cwd())}/"
    except ValueError:
        return f"{bin_dir}/"
