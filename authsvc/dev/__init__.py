"""The embedded default: a local issuer and JWKS so authsvc runs with no Supabase project."""

import os
from collections.abc import Mapping
from pathlib import Path

from authsvc.dev.issuer import DEV_ISSUER, DevIssuer, serve_jwks

__all__ = ["DEV_ISSUER", "DevIssuer", "dev_directory", "serve_jwks"]


def dev_directory(environ: Mapping[str, str]) -> Path:
    """Where the dev signing key lives: one place per user, whatever the cwd.

    `AUTHSVC_DEV_DIR` if set, else `$XDG_DATA_HOME/authsvc/dev` (by default
    `~/.local/share/authsvc/dev`), so `authsvc token` run from any directory
    signs with the key `authsvc dev` serves.
    """
    if environ.get("AUTHSVC_DEV_DIR"):
        return Path(environ["AUTHSVC_DEV_DIR"])
    data_home = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or str(Path.home()), ".local", "share"
    )
    return Path(data_home) / "authsvc" / "dev"
