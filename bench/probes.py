"""Single real calls: is a server ready, and does it accept what a cell sends?

Load generators only count answers; before each cell one request of its
bodies goes through a real client (grpc.aio, aiohttp), so a cell whose every
request would be refused fails loudly instead of measuring refusals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)
GRPC_TIMEOUT_SECONDS = 10.0
METRICS_WANTED = ("authsvc_token_cache", "authsvc_token_verifications_total")


def first_message(bodies: Path) -> bytes:
    """The first gRPC message of a bodies file, without its 5-byte prefix."""
    with bodies.open("rb") as file:
        prefix = file.read(5)
        return file.read(int.from_bytes(prefix[1:5], "big"))


async def grpc_call(port: int, path: str, message: bytes, key: str) -> bytes | str:
    """The response bytes, or the status code's name."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response: bytes = await channel.unary_unary(path)(
                message,
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=GRPC_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name} {exc.details()}"
    return response


async def grpc_check(
    port: int,
    path: str,
    bodies: Path,
    key: str,
    validate: Callable[[bytes], str | None] | None = None,
) -> str | None:
    """None if the first body gets a good answer, else what went wrong."""
    answer = await grpc_call(port, path, first_message(bodies), key)
    if isinstance(answer, str):
        return f"the server refused the bench's request: {answer}"
    return validate(answer) if validate is not None else None


async def grpc_ready(port: int, path: str, bodies: Path, key: str) -> bool:
    try:
        return await grpc_check(port, path, bodies, key) is None
    except (grpc.RpcError, OSError):
        return False


async def http_ready(port: int, path: str = "/healthz") -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def node_check(port: int, token: str) -> str | None:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
        session.get(
            f"http://127.0.0.1:{port}/verify",
            headers={"authorization": f"Bearer {token}"},
        ) as response,
    ):
        if response.status != 200:
            return f"the Node baseline refused a bench token: {await response.text()}"
    return None


async def authsvc_metrics(port: int) -> dict[str, str]:
    """authsvc's token-cache and verification counters, if it exports them."""
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    return {
        name: value
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith(METRICS_WANTED)
    }
