"""Several server processes on one port, so every core verifies tokens.

One Python process verifies on one core (the GIL), so `authsvc serve` with
more than one worker becomes a supervisor: it checks that the gRPC port is
free, then starts N copies of itself (`AUTHSVC_WORKER_INDEX` set), each a full
`AuthsvcServer` with its own event loop, key cache and a share of the
database pool, all bound to the same port with SO_REUSEPORT so the kernel
spreads connections across them. They share nothing but configuration.

The supervisor owns what must be one thing per Machine:
- the operations port: `/metrics` is every worker's metrics, each sample
  labelled `worker`; `/readyz` is 200 only when every worker is ready (the
  failing services of all of them are named); `/healthz` is 200 while every
  worker runs. Each worker serves its own on a loopback port it reports.
- signals: SIGTERM/SIGINT are passed to every worker, which drain as one
  server would; SIGHUP is passed on (callers reload). A second signal kills
  them. The supervisor exits 0 only if every worker did.
- failure: a worker that dies on its own takes the others down, and the
  supervisor exits 1, so Fly restarts the Machine rather than serve at part
  strength unnoticed.

A worker asks the kernel for SIGTERM when its supervisor dies, so a killed
supervisor leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from authsvc.config import ConfigError, Settings
from authsvc.ops.http import (
    METRICS_PATH,
    READINESS_PATH,
    OpsServer,
    Readiness,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

WORKER_START_TIMEOUT_SECONDS = 60.0
# After the grace period a worker still closes its pool and HTTP client.
STOP_MARGIN_SECONDS = 3.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WORKER_HTTP_TIMEOUT_SECONDS = 2.0
# Set by the supervisor to its pid: the worker settings are honoured only in
# a process this supervisor started, never when an operator sets them.
WORKER_PARENT_VARIABLE = "AUTHSVC_WORKER_PARENT"
# Concurrent scrapes and probes share one round of questions to the workers,
# and its answer for this long, so a flood of requests on the ops port (which
# needs no key) cannot queue up worker requests until they time out.
READINESS_REUSE_SECONDS = 0.25
METRICS_REUSE_SECONDS = 1.0
# gRPC service names are short; anything longer cannot name one.
MAX_SERVICE_NAME_CHARS = 256
MAX_REMEMBERED_SERVICES = 16


class WorkerFailed(Exception):
    """A worker could not start; `exit_code` is its own."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    ops_port: int | None = None

    @property
    def running(self) -> bool:
        return self.process.returncode is None


def pool_share(pool_max: int, workers: int) -> int:
    """Each worker's pool: the Machine's AUTHSVC_DB_POOL_MAX split evenly,
    at least one connection each."""
    return max(1, pool_max // workers)


def reserve_port(host: str, port: int) -> int:
    """Fail if something already listens on host:port; return the port (a
    free one for port 0). Bound without SO_REUSEPORT, so another server that
    holds the port (with or without it) makes this fail, as C23 wants."""
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # As gRPC's own listener does: connections of a server that just
        # stopped (TIME_WAIT) must not block a restart; a listening socket
        # still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        return int(probe.getsockname()[1])


class Supervisor:
    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self._environ = dict(environ)
        self.count = settings.worker_count
        self.workers: list[Worker] = []
        self.port: int | None = None
        self.ops_port: int | None = None
        self._stopping = False
        self._http = httpx.AsyncClient(timeout=WORKER_HTTP_TIMEOUT_SECONDS)
        self._ops = OpsServer(self._exposition, self._readiness, self._liveness)
        self._readiness_rounds: dict[str, _Round[Readiness | None]] = {}
        self._metrics_round: _Round[bytes] | None = None

    async def start(self) -> None:
        host, port = self.settings.listen_host_port
        self.port = reserve_port(host, port)
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        share = pool_share(self.settings.db_pool_max, self.count)
        logger.info(
            "starting workers count=%d listen_addr=%s%s",
            self.count,
            listen,
            f" db_pool_per_worker={share}" if self.settings.database_url else "",
        )
        if self.settings.metrics_host_port is not None:
            ops_host, ops_port = self.settings.metrics_host_port
            self.ops_port = await self._ops.start(ops_host, ops_port)
        starts = [self._start_worker(i, listen, share) for i in range(self.count)]
        results = await asyncio.gather(*starts, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            first = failures[0]
            if isinstance(first, WorkerFailed):
                raise first
            raise WorkerFailed(f"a worker did not start: {first}", 1) from first
        logger.info("workers ready count=%d port=%d", self.count, self.port)

    async def _start_worker(self, index: int, listen: str, pool: int) -> None:
        read_fd, write_fd = os.pipe()
        env = {
            **self._environ,
            "AUTHSVC_LISTEN_ADDR": listen,
            "AUTHSVC_METRICS_ADDR": "127.0.0.1:0",
            "AUTHSVC_DB_POOL_MAX": str(pool),
            "AUTHSVC_WORKER_INDEX": str(index),
            "AUTHSVC_WORKER_REPORT_FD": str(write_fd),
            WORKER_PARENT_VARIABLE: str(os.getpid()),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "authsvc",
                "serve",
                env=env,
                pass_fds=(write_fd,),
                # Its own process group: a terminal's Ctrl-C reaches only the
                # supervisor, which passes one SIGTERM on.
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        worker = Worker(index, process)
        self.workers.append(worker)
        report = await asyncio.wait_for(
            asyncio.to_thread(_read_report, read_fd), WORKER_START_TIMEOUT_SECONDS
        )
        if report is None:
            code = await process.wait()
            raise WorkerFailed(
                f"worker {index} exited with status {code} before serving", code or 1
            )
        worker.ops_port = report.get("ops_port")

    async def run(self) -> int:
        """Until a stop signal or a worker's death; then stop all. Exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if stop.is_set():
                logger.warning("second %s during shutdown: killing workers", name)
                self._signal_all(signal.SIGKILL)
                return
            logger.info("received %s", name)
            stop.set()

        def on_hangup() -> None:
            self._signal_all(signal.SIGHUP)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)

        stopped = asyncio.create_task(stop.wait())
        died = asyncio.create_task(self._first_death())
        await asyncio.wait((stopped, died), return_when=asyncio.FIRST_COMPLETED)
        healthy = not died.done()
        if not healthy:
            worker = died.result()
            logger.error(
                "worker %d exited with status %s: stopping the others",
                worker.index,
                worker.process.returncode,
            )
        for task in (stopped, died):
            task.cancel()
        codes = await self.stop()
        return 0 if healthy and all(code == 0 for code in codes) else 1

    async def stop(self) -> list[int]:
        """SIGTERM every worker and wait for them; kill what outlasts the grace."""
        self._stopping = True
        logger.info("stopping workers count=%d", len(self.workers))
        self._signal_all(signal.SIGTERM)
        limit = self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        waits = [w.process.wait() for w in self.workers]
        try:
            codes = await asyncio.wait_for(asyncio.gather(*waits), limit)
        except TimeoutError:
            logger.warning("workers did not stop in %gs: killing them", limit)
            self._signal_all(signal.SIGKILL)
            codes = await asyncio.gather(*(w.process.wait() for w in self.workers))
        await self._ops.stop()
        await self._http.aclose()
        logger.info("stopped")
        return list(codes)

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.running:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    async def _first_death(self) -> Worker:
        waits = {
            asyncio.create_task(w.process.wait()): w for w in self.workers if w.running
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for task in waits:
                task.cancel()

    # The operations port, across workers.

    async def _liveness(self) -> bool:
        return all(worker.running for worker in self.workers)

    async def _readiness(self, service: str) -> Readiness | None:
        if self._stopping or not self.workers:
            return Readiness(False, ("supervisor",) if not service else (service,))
        if len(service) > MAX_SERVICE_NAME_CHARS:
            return None
        current = self._readiness_rounds.get(service)
        if current is None or current.stale(READINESS_REUSE_SECONDS):
            if len(self._readiness_rounds) >= MAX_REMEMBERED_SERVICES:
                self._readiness_rounds.clear()
            current = _Round(self._ask_readiness(service))
            self._readiness_rounds[service] = current
        return await current.answer()

    async def _ask_readiness(self, service: str) -> Readiness | None:
        answers = await asyncio.gather(
            *(self._worker_readiness(w, service) for w in self.workers)
        )
        known = [answer for answer in answers if answer is not None]
        if len(known) < len(answers):
            return None
        failing: list[str] = []
        for answer in known:
            failing += [name for name in answer.failing if name not in failing]
        return Readiness(not failing, tuple(failing))

    async def _worker_readiness(self, worker: Worker, service: str) -> Readiness | None:
        unreachable = Readiness(False, (f"worker {worker.index}",))
        if not worker.running or worker.ops_port is None:
            return unreachable
        url = f"http://127.0.0.1:{worker.ops_port}{READINESS_PATH}"
        try:
            response = await self._http.get(url, params={"service": service})
            if response.status_code == 404:
                return None
            if response.status_code not in (200, 503):
                return unreachable
            failing = response.json()["failing"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return unreachable
        return Readiness(response.status_code == 200, tuple(map(str, failing)))

    async def _exposition(self) -> bytes:
        current = self._metrics_round
        if current is None or current.stale(METRICS_REUSE_SECONDS):
            current = self._metrics_round = _Round(self._gather_metrics())
        return await current.answer()

    async def _gather_metrics(self) -> bytes:
        texts = await asyncio.gather(*(self._worker_metrics(w) for w in self.workers))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Labelled(texts))
        return generate_latest(registry)

    async def _worker_metrics(self, worker: Worker) -> tuple[str, str]:
        if not worker.running or worker.ops_port is None:
            return str(worker.index), ""
        url = f"http://127.0.0.1:{worker.ops_port}{METRICS_PATH}"
        try:
            response = await self._http.get(url)
        except httpx.HTTPError:
            return str(worker.index), ""
        return str(worker.index), response.text


class _Round(Generic[T]):
    """One round of questions to the workers, shared by everyone who asks
    while it runs and for a short while after."""

    def __init__(self, question: Coroutine[Any, Any, T]) -> None:
        self._started = time.monotonic()
        self._task = asyncio.ensure_future(question)

    def stale(self, reuse_seconds: float) -> bool:
        return self._task.done() and (time.monotonic() - self._started > reuse_seconds)

    async def answer(self) -> T:
        # Shielded: one asker giving up must not cancel the others' answer.
        return await asyncio.shield(self._task)


class _Labelled(Collector):
    """Every worker's metric families merged, each sample labelled `worker`."""

    def __init__(self, texts: list[tuple[str, str]]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker, text in self._texts:
            for family in text_string_to_metric_families(text):
                into = merged.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type, family.unit),
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker}
                    into.add_sample(sample.name, labels, sample.value)
        yield from merged.values()


def _read_report(fd: int) -> dict[str, int] | None:
    """A worker's one-line JSON report, or None if it closed the pipe first."""
    with os.fdopen(fd, "rb") as pipe:
        line = pipe.readline()
    if not line:
        return None
    report: dict[str, int] = json.loads(line)
    return report


# The worker's side.


def report_ready(settings: Settings, grpc_port: int, ops_port: int | None) -> None:
    """Tell the supervisor this worker serves (and where its own ops port is)."""
    if settings.worker_report_fd is None:
        return
    line = json.dumps({"grpc_port": grpc_port, "ops_port": ops_port}) + "\n"
    with os.fdopen(settings.worker_report_fd, "wb") as pipe:
        pipe.write(line.encode())


def stop_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by SIGKILL), so an
    orphaned worker drains and exits like one told to stop."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def check_worker_environment(settings: Settings, environ: Mapping[str, str]) -> None:
    """Refuse worker settings in a process no supervisor started: they would
    share the port silently (SO_REUSEPORT) and write to an arbitrary fd."""
    if settings.worker_index is None and settings.worker_report_fd is None:
        return
    if environ.get(WORKER_PARENT_VARIABLE) != str(os.getppid()):
        raise ConfigError(
            "AUTHSVC_WORKER_INDEX and AUTHSVC_WORKER_REPORT_FD are set by "
            "`authsvc serve` for its own workers; unset them (AUTHSVC_WORKERS "
            "or --workers chooses the number of workers)"
        )
