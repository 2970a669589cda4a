"""Everything the bench runs besides Python: installed when missing.

wrk, h2load (Debian's nghttp2-client) and PgBouncer come from apt-get when we
are root on a Debian-like machine; the Node baseline's packages come from
`npm ci` against bench/node/package-lock.json. Anything that cannot be
installed stops the bench with the command that would install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.pgbouncer import PgBouncerError, find_pgbouncer

NODE_DIR = Path(__file__).resolve().parent / "node"
APT_PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client"}


class ToolMissing(Exception):
    """A tool the bench needs is missing and could not be installed."""


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolMissing(
            f"missing {', '.join(packages)}: install with "
            f"`apt-get install -y {' '.join(packages)}`"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    print(f"bench: installing {' '.join(packages)} with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # noqa: S607
    subprocess.run(  # noqa: S603 (package names are ours)
        ["apt-get", "install", "-y", "-qq", *packages],  # noqa: S607
        check=True,
        env=env,
    )


def _pgbouncer_missing() -> bool:
    try:
        find_pgbouncer()
    except PgBouncerError:
        return True
    return False


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if _pgbouncer_missing():
        missing.append("pgbouncer")
    if missing:
        _apt_install(missing)

    if shutil.which("node") is None or shutil.which("npm") is None:
        raise ToolMissing("the Node baseline needs Node 20 and npm on PATH")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        print("bench: npm ci in bench/node", flush=True)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"],  # noqa: S607
            cwd=NODE_DIR,
            check=True,
        )
