"""gRPC clients that tests run as separate processes.

A client of its own process has its own gRPC core: its logs (GRPC_TRACE) can be
read as evidence, and its memory is not counted as the server's. Run as
`python -m tests.support.transport_client COMMAND PLAN_JSON`; the last line on
stdout is a JSON report, gRPC's logs go to stderr.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.v1 import auth_pb2, auth_pb2_grpc

CALL_TIMEOUT_SECONDS = 30.0

# An eager client (C24): it pings every second, idle or not, and never stops
# pinging for lack of data. The core accepts 1 s without raising it.
KEEPALIVE_TIME_MS = 1_000
KEEPALIVE_CLIENT_OPTIONS = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


async def keepalive(plan: dict[str, Any]) -> dict[str, Any]:
    """Call, stay idle, call again, then make a long call if a token is given.

    Reports the calls that succeeded (a failed one ends the process) and every
    connectivity state the channel went through: a channel that had to
    reconnect shows READY more than once.
    """
    metadata = (("authorization", f"Bearer {plan['key']}"),)
    states: list[str] = []
    calls = 0
    async with grpc.aio.insecure_channel(
        plan["target"], options=KEEPALIVE_CLIENT_OPTIONS
    ) as channel:
        watcher = asyncio.create_task(_watch_states(channel, states))
        health = health_pb2_grpc.HealthStub(channel)

        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await asyncio.sleep(plan["idle_seconds"])
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        calls += 2

        if plan.get("long_call_token"):
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            request = auth_pb2.VerifyTokenRequest(token=plan["long_call_token"])
            await auth.VerifyToken(
                request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
            )
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            calls += 2

        watcher.cancel()
    return {"calls": calls, "states": states}


async def flood(plan: dict[str, Any]) -> dict[str, Any]:
    """Send `calls` VerifyToken requests of a `token_bytes` token at once."""
    metadata = (("authorization", f"Bearer {plan['key']}"),)
    request = auth_pb2.VerifyTokenRequest(token="a" * plan["token_bytes"])
    outcomes: collections.Counter[str] = collections.Counter()
    details: set[str] = set()

    async with grpc.aio.insecure_channel(plan["target"]) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        calls = [
            auth.VerifyToken(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            for _ in range(plan["calls"])
        ]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, grpc.aio.AioRpcError):
                outcomes[result.code().name] += 1
                details.add(result.details() or "")
            elif isinstance(result, BaseException):
                outcomes[type(result).__name__] += 1
            else:
                outcomes["OK"] += 1
    return {"outcomes": dict(outcomes), "details": sorted(details)}


async def _watch_states(channel: grpc.aio.Channel, states: list[str]) -> None:
    state = channel.get_state(try_to_connect=False)
    while True:
        states.append(state.name)
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=False)


COMMANDS = {"keepalive": keepalive, "flood": flood}


def main() -> None:
    command, plan = sys.argv[1], json.loads(sys.argv[2])
    report = asyncio.run(COMMANDS[command](plan))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
