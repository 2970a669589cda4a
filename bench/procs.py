"""Processes under test: start, wait until ready, stop; CPU time and RSS from /proc.

CPU time is utime + stime of a process and every descendant alive at the
moment of reading (server workers, Node cluster workers), so a cell's cost is
the difference of two readings around it. Children that exit between the two
readings would be missed; the servers here keep theirs for the whole run.
RSS is summed over the same tree, once or at intervals through a window
(`RssSampler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
STOP_TIMEOUT_SECONDS = 10.0
# What is kept of a server's log once it has stopped.
LOG_TAIL_BYTES = 1 << 20


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after ')' is fixed.
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its live descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            pages = int(Path(f"/proc/{member}/statm").read_text().split()[1])
            total += pages * PAGE_BYTES
    return total


class RssSampler:
    """`rss_bytes` of a process tree every `every` seconds of a measured window.

    Pass `on_mark` to `loaders.marked_client`: sampling starts at the client's
    `measure-start` (offset 0), and `measure-end` takes the last sample.
    """

    def __init__(self, pid: int, every: float, seconds: float) -> None:
        self.pid = pid
        self.every = every
        self.seconds = seconds
        self.samples: list[tuple[float, int]] = []
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None

    def on_mark(self, mark: str) -> None:
        if mark == "measure-start":
            self._started = time.monotonic()
            self._task = asyncio.ensure_future(self._periodic())
        elif mark == "measure-end" and self._task is not None:
            self.stop()
            self._take()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _take(self) -> None:
        offset = round(time.monotonic() - self._started, 1)
        self.samples.append((offset, rss_bytes(self.pid)))

    async def _periodic(self) -> None:
        # Offsets 0, every, 2 x every, ... short of the window's end, which
        # `measure-end` samples; each aimed at its own instant, so no drift.
        step = 0
        while step * self.every < self.seconds - self.every / 2:
            await asyncio.sleep(
                max(0.0, self._started + step * self.every - time.monotonic())
            )
            self._take()
            step += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A server process under test, with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None  # noqa: S101 (started before use)
        return self.process.pid

    async def start(
        self, ready: Callable[[], Awaitable[bool]], timeout: float = 60.0
    ) -> Service:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = asyncio.get_running_loop().time() + timeout
        while not await ready():
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} at start; "
                    f"see {self.log}"
                )
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(
                    f"{self.name} not ready in {timeout:g} s; see {self.log}"
                )
            await asyncio.sleep(0.2)
        return self

    async def stop(self) -> None:
        try:
            await self._stop()
        finally:
            _keep_tail(self.log, LOG_TAIL_BYTES)

    async def _stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            # The whole session: workers and cluster children too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _keep_tail(log: Path, size: int) -> None:
    """Cut a stopped server's log to its last `size` bytes: one access line
    per call makes hundreds of MB a run, and the end (errors, shutdown) is
    what a reader needs."""
    with contextlib.suppress(FileNotFoundError), log.open("r+b") as file:
        length = file.seek(0, os.SEEK_END)
        if length <= size:
            return
        file.seek(length - size)
        tail = file.read().partition(b"\n")[2]  # from the first whole line
        file.seek(0)
        file.write(b"[... earlier lines cut by the bench ...]\n" + tail)
        file.truncate()
