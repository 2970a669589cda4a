"""The operations port: Prometheus metrics and HTTP health for Fly's checks.

Fly's checks speak HTTP, not gRPC. `/healthz` says the process is up;
`/readyz` gives the answer the gRPC health service gives for `""` (or for
`?service=NAME`), read from the same state, never from a probe of its own:
200 when SERVING, 503 with the failing services named otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

DEFAULT_METRICS_PORT = 9091
METRICS_PATH = "/metrics"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


@dataclass(frozen=True)
class Readiness:
    serving: bool
    failing: tuple[str, ...] = ()


class OpsServer:
    """Serves what it is handed: one server's own state, or (with workers)
    the supervisor's view across its worker processes."""

    def __init__(
        self,
        exposition: Callable[[], Awaitable[bytes]],
        readiness: Callable[[str], Awaitable[Readiness | None]],
        liveness: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._exposition = exposition
        self._readiness = readiness
        self._liveness = liveness
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._serve_metrics)
        app.router.add_get(LIVENESS_PATH, self._serve_liveness)
        app.router.add_get(READINESS_PATH, self._serve_readiness)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: any); return the bound port."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=await self._exposition())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    async def _serve_liveness(self, request: web.Request) -> web.Response:
        if self._liveness is not None and not await self._liveness():
            return _json(503, {"status": "failing"})
        return _json(200, {"status": "ok"})

    async def _serve_readiness(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        readiness = await self._readiness(service)
        if readiness is None:
            return _json(404, {"service": service, "status": "SERVICE_UNKNOWN"})
        body = {
            "service": service,
            "status": "SERVING" if readiness.serving else "NOT_SERVING",
            "failing": list(readiness.failing),
        }
        return _json(200 if readiness.serving else 503, body)


def _json(status: int, body: Mapping[str, object]) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json"
    )
