"""A real JWKS endpoint on loopback that tests can steer.

It serves whatever document it holds, counts every request, and can answer
with an error status, garbage bytes, or after a delay (a hang is a long one).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


class JwksStub:
    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.body: bytes | None = None
        self.delay_seconds = 0.0
        self.hits = 0
        # Set on every request: a test clears it, then waits for the next one.
        self.requested = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def serve_keys(self, *keys: Any) -> None:
        self.document = {"keys": [key.jwk() for key in keys]}

    async def start(self) -> JwksStub:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = self.base_url + JWKS_PATH
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.requested.set()
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        if self.status != 200:
            return web.Response(status=self.status, text="upstream trouble")
        return web.json_response(self.document)
