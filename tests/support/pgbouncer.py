"""A real PgBouncer in transaction pooling mode, in front of the test server.

PgBouncer refuses to run as root, so when the tests run as root it runs as the
``postgres`` OS user, with its files in a private directory owned by that user.
It runs in the foreground as our child and gets SIGTERM if we die, so a crashed
test run leaves no PgBouncer behind.

Through it, asyncpg needs ``statement_cache_size=0``: PgBouncer 1.18 does not
carry named prepared statements across server connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support.postgres import LOGIN_ROLE, _admin_parts

INSTALL_HINT = "apt-get install -y pgbouncer"
RUN_AS = "postgres"  # OS user PgBouncer runs as when we are root
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0


class PgBouncerError(RuntimeError):
    pass


def find_pgbouncer() -> str:
    """The pgbouncer binary; /usr/sbin is often missing from PATH."""
    found = shutil.which("pgbouncer") or shutil.which(
        "pgbouncer", path="/usr/sbin:/usr/local/sbin"
    )
    if found is None:
        raise PgBouncerError(
            f"pgbouncer is not installed; install it with `{INSTALL_HINT}`"
            " (`make test` does this when run as root)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _launcher() -> list[str]:
    """util-linux's setpriv: switch to the postgres user when we are root and
    ask for SIGTERM when our thread dies, then exec PgBouncer.

    A `preexec_fn` could do the same, but it runs Python between fork and
    exec in a process whose gRPC threads are gone; gRPC's fork handlers then
    abort the child now and again (seen: "epoll_wait error: Bad file
    descriptor", status -6). Without one, no Python runs in the child.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise PgBouncerError("setpriv (util-linux) is needed to start PgBouncer")
    command = [setpriv, "--pdeathsig", "TERM"]
    if os.geteuid() == 0:
        command += ["--reuid", RUN_AS, "--regid", RUN_AS, "--clear-groups"]
    return command


class PgBouncer:
    """PgBouncer with ``pool_mode=transaction`` on a free loopback port.

    Any database name works (``* =`` wildcard); the users it accepts are
    ``users`` (trust auth). ``default_pool_size`` is per database/user pair.
    """

    def __init__(
        self,
        *,
        default_pool_size: int = 5,
        upstream_host: str | None = None,
        upstream_port: int | None = None,
        users: tuple[str, ...] = (LOGIN_ROLE, "postgres"),
        settings: dict[str, str | int] | None = None,
    ) -> None:
        admin_host, admin_port = _admin_parts()
        self.default_pool_size = default_pool_size
        self.upstream_host = upstream_host or admin_host
        self.upstream_port = upstream_port or admin_port
        self.users = users
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.directory: Path | None = None
        self._process: asyncio.subprocess.Process | None = None

    # -- files -----------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="authsvc-pgbouncer-"))
            if os.geteuid() == 0:
                user = pwd.getpwnam(RUN_AS)
                os.chown(self.directory, user.pw_uid, user.pw_gid)
        return self.directory

    @property
    def log_path(self) -> Path:
        return self._dir / "pgbouncer.log"

    @property
    def _stderr_path(self) -> Path:
        return self._dir / "stderr.log"

    def _write_config(self) -> Path:
        directory = self._dir
        userlist = directory / "userlist.txt"
        userlist.write_text("".join(f'"{user}" ""\n' for user in self.users))
        settings: dict[str, str | int] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(userlist),
            "admin_users": "postgres",
            "pool_mode": "transaction",
            "default_pool_size": self.default_pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": 0,
            "max_client_conn": 500,
            # Transaction pooling never resets a server between clients;
            # anything a transaction leaves behind (SET, not SET LOCAL) leaks.
            "server_reset_query": "",
            # asyncpg's startup packet has only user, database and
            # client_encoding (tracked natively); extra_float_digits is what
            # psql-era and JDBC clients send.
            "ignore_startup_parameters": "extra_float_digits",
            # A failed server login (database dropped, server restarting)
            # blocks that pool for server_login_retry; keep tests quick.
            "server_login_retry": 1,
            "logfile": str(directory / "pgbouncer.log"),
            "pidfile": str(directory / "pgbouncer.pid"),
        }
        settings.update(self.settings)
        lines = [
            "[databases]",
            f"* = host={self.upstream_host} port={self.upstream_port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        ini = directory / "pgbouncer.ini"
        ini.write_text("\n".join(lines) + "\n")
        return ini

    def log_tail(self, lines: int = 30) -> str:
        """The end of PgBouncer's log and stderr, for error messages."""
        chunks = []
        for path in (self.log_path, self._stderr_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(chunks) or "(no output)"

    # -- lifecycle -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> PgBouncer:
        if self.running:
            raise PgBouncerError("PgBouncer is already running")
        binary = find_pgbouncer()
        if not self.port:
            self.port = _free_port()
        ini = self._write_config()
        # A stale pidfile from a killed process would stop it from starting.
        (self._dir / "pgbouncer.pid").unlink(missing_ok=True)

        with self._stderr_path.open("ab") as stderr:
            self._process = await asyncio.create_subprocess_exec(
                *_launcher(),
                binary,
                str(ini),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )

        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while True:
            if self._process.returncode is not None:
                code = self._process.returncode
                self._process = None
                raise PgBouncerError(
                    f"PgBouncer exited with status {code} at start:\n" + self.log_tail()
                )
            if await self._accepts_connections():
                return self
            if asyncio.get_running_loop().time() > deadline:
                await self._terminate()
                raise PgBouncerError(
                    f"PgBouncer did not listen on {self.host}:{self.port}"
                    f" within {START_TIMEOUT_SECONDS:g} s:\n" + self.log_tail()
                )
            await asyncio.sleep(0.05)

    async def _accepts_connections(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout=1
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _terminate(self) -> None:
        """Stop the process (immediate shutdown), killing it if it lingers."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop PgBouncer and remove its files. ``start()`` may follow."""
        await self._terminate()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    async def restart(self) -> PgBouncer:
        """Stop and start again on the same port; all connections drop."""
        await self._terminate()
        return await self.start()

    async def __aenter__(self) -> PgBouncer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses -------------------------------------------------------

    def dsn(self, database: str, user: str = LOGIN_ROLE) -> str:
        if not self.port:
            raise PgBouncerError("PgBouncer has no port until start()")
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"
