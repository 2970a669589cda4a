"""The bare gRPC ceiling: a trivial echo RPC on authsvc's server set-up.

Same `grpc.aio` server, same server options (`authsvc.server.server_options`
with default settings) and the same event loop as `authsvc serve` (uvloop); the one
method `/bench.Echo/Echo` returns the request bytes unchanged, with no
deserialisation, no caller check and no logging. With `--workers N` it runs
N processes on one port (SO_REUSEPORT, the only option changed), the way
authsvc's workers will.

    python -m bench.echo_server --port 50100 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
from typing import Any

import grpc

from authsvc.cli import serving_loop_factory
from authsvc.config import Settings
from authsvc.server import server_options

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


def _options(workers: int) -> list[tuple[str, Any]]:
    settings = Settings.from_environ(
        {"AUTHSVC_ISSUER": "http://bench.invalid", "AUTHSVC_JWKS_URL": "off",
         "SUPABASE_JWT_SECRET": "x" * 32}
    )  # fmt: skip
    options = [option for option in server_options(settings)]
    if workers > 1:
        options = [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in options]
    return options


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _serve(port: int, workers: int) -> None:
    server = grpc.aio.server(options=_options(workers))
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"echo server: cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def _worker(port: int, workers: int) -> None:
    # The same event loop as `authsvc serve` (authsvc.cli picks uvloop).
    with asyncio.Runner(loop_factory=serving_loop_factory()) as runner:
        runner.run(_serve(port, workers))


def main() -> None:
    parser = argparse.ArgumentParser(description="bare gRPC echo server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers == 1:
        _worker(args.port, 1)
        return

    # Children are forked before any gRPC object exists in this process.
    children = [
        multiprocessing.get_context("fork").Process(
            target=_worker, args=(args.port, args.workers)
        )
        for _ in range(args.workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _: object) -> None:
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
