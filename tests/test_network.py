"""Listening addresses on Fly-like networks (C23), in private network namespaces.

Fly's 6PN cannot be reached from here, so each test builds the situation in a
network namespace of its own (`unshare -mn`): its own loopback, an fdaa::
address standing in for the machine's 6PN address, and a private /etc/hosts
bind-mounted inside the namespace for the `fly-local-6pn` name. The machine's
own network and /etc/hosts are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PORT = 50999
SIX_PN_ADDRESS = "fdaa:0:1::2"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="network namespaces need root and unshare (CI runs as root)",
)

PRELUDE = f"""
set -u
cd "$(dirname "$0")"
ip link set lo up
export SUPABASE_URL=https://abcdefghijklmnopqrst.supabase.co
export AUTHSVC_JWKS_URL=off
export SUPABASE_JWT_SECRET=0123456789012345678901234567890123456789
# These tests are about binding; health needs no caller key.
export AUTHSVC_ALLOW_UNAUTHENTICATED=true
check() {{ {BIN}/grpcurl -plaintext -max-time 3 "$1" grpc.health.v1.Health/Check; }}
# Up to 15 s for the server (and, by default, its workers) to answer on $1.
wait_serving() {{
  for _ in $(seq 150); do check "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}}
"""


def run_in_namespace(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "scenario.sh"
    script.write_text(PRELUDE + body)
    return subprocess.run(
        ["unshare", "-mn", "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_c23_listen_on_fly_local_6pn_binds_the_6pn_address(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{SIX_PN_ADDRESS} fly-local-6pn\n")

    result = run_in_namespace(
        tmp_path,
        f"""
ip -6 addr add {SIX_PN_ADDRESS}/128 dev lo
mount --bind {hosts} /etc/hosts
AUTHSVC_LISTEN_ADDR=fly-local-6pn:{PORT} {BIN}/authsvc serve 2>server.log &
wait_serving '[{SIX_PN_ADDRESS}]:{PORT}'
check '[{SIX_PN_ADDRESS}]:{PORT}' && echo SIXPN_OK
check '127.0.0.1:{PORT}' >/dev/null 2>&1 || echo IPV4_REFUSED
kill -TERM %1; wait %1; echo "EXIT=$?"
""",
    )

    assert "SIXPN_OK" in result.stdout, result.stderr
    assert "IPV4_REFUSED" in result.stdout
    assert "EXIT=0" in result.stdout


def test_c23_wildcard_falls_back_to_ipv4_where_ipv6_is_disabled(tmp_path: Path) -> None:
    """The documented fallback: `[::]` without IPv6 still serves IPv4."""
    result = run_in_namespace(
        tmp_path,
        f"""
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1
AUTHSVC_LISTEN_ADDR='[::]:{PORT}' {BIN}/authsvc serve 2>server.log &
wait_serving '127.0.0.1:{PORT}'
check '127.0.0.1:{PORT}' && echo IPV4_OK
kill -TERM %1; wait %1; echo "EXIT=$?"
""",
    )

    assert "IPV4_OK" in result.stdout, result.stderr
    assert "EXIT=0" in result.stdout


def test_c23_unresolvable_listen_address_fails_at_start(tmp_path: Path) -> None:
    result = run_in_namespace(
        tmp_path,
        f"""
AUTHSVC_LISTEN_ADDR=no-such-host.invalid:{PORT} timeout 10 {BIN}/authsvc serve
echo "EXIT=$?"
""",
    )

    assert "EXIT=1" in result.stdout
    assert f"cannot listen on no-such-host.invalid:{PORT}" in result.stderr
