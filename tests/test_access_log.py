"""The access event's direct path to stdout (authsvc.ops.logging).

In the JSON format, access events skip logging's records and are written in
batches. These tests hold that path to what the logging path gives: the same
fields, whole lines, each write small enough (PIPE_BUF) that workers sharing
one stdout pipe never interleave mid-line, and the order of events kept.
A SOCK_SEQPACKET socket stands in for stdout: every write arrives as one
packet, so the test sees each write's boundaries.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import select
import socket
from collections.abc import Iterator

import pytest

from authsvc.ops import logging as ops_logging
from authsvc.ops.logging import (
    ACCESS_FLUSH_SECONDS,
    ACCESS_LOGGER,
    bind_call,
    json_formatter,
    log_access,
    unbind_call,
)

CALLS = 100


@pytest.fixture
def stdout_packets() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    with reader, writer:
        yield reader, writer


@pytest.fixture
def access_logger_at_info() -> Iterator[None]:
    logger = logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def _call_fields(number: int) -> tuple[tuple[str, str], ...]:
    return (
        ("method", "VerifyToken"),
        ("caller", "billing"),
        ("request_id", f"req-{number:04d}"),
        ("peer", 'ipv6:[::1]:5 "quoted"'),
    )


def _log_calls(direct: object, count: int) -> None:
    for number in range(count):
        token = bind_call(*_call_fields(number))
        try:
            direct.write("OK", "", 0.12)  # type: ignore[attr-defined]
        finally:
            unbind_call(token)


async def _packets(reader: socket.socket, lines: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []
    async with asyncio.timeout(5):
        while sum(packet.count(b"\n") for packet in packets) < lines:
            packets.append(await loop.sock_recv(reader, 65536))
    return packets


async def test_access_lines_wait_then_leave_in_whole_line_writes_within_pipe_buf(
    stdout_packets: tuple[socket.socket, socket.socket],
) -> None:
    reader, writer = stdout_packets
    direct = ops_logging._DirectAccessLog(writer.fileno(), worker=3)

    _log_calls(direct, CALLS)
    with pytest.raises(BlockingIOError):
        reader.recv(65536)  # held, not one write per line
    started = asyncio.get_running_loop().time()
    packets = await _packets(reader, CALLS)

    assert asyncio.get_running_loop().time() - started < ACCESS_FLUSH_SECONDS + 1
    assert len(packets) > 1
    assert all(len(packet) <= select.PIPE_BUF for packet in packets)
    assert all(packet.endswith(b"\n") for packet in packets)
    events = [json.loads(line) for packet in packets for line in packet.splitlines()]
    assert [event["request_id"] for event in events] == [
        f"req-{number:04d}" for number in range(CALLS)
    ]
    first = events[0]
    assert first["peer"] == 'ipv6:[::1]:5 "quoted"'
    assert (first["status"], first["reason"], first["duration_ms"]) == ("OK", "", 0.12)
    assert first["worker"] == 3
    assert datetime.datetime.fromisoformat(first["time"]).tzinfo is not None


async def test_another_event_is_written_after_the_access_lines_before_it(
    stdout_packets: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader, writer = stdout_packets
    direct = ops_logging._DirectAccessLog(writer.fileno(), worker=None)
    monkeypatch.setattr(ops_logging, "_direct_access", direct)
    # Line buffered: each event is one write, as with unbuffered stdout.
    # (A socket: opening it does not block.)
    stream = open(writer.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115, ASYNC230
    handler = ops_logging._JsonStreamHandler(stream)
    handler.setFormatter(json_formatter())

    _log_calls(direct, 3)
    handler.handle(logging.makeLogRecord({"name": "authsvc.server", "msg": "later"}))

    packets = await _packets(reader, 4)
    events = [json.loads(line) for packet in packets for line in packet.splitlines()]
    assert [event["logger"] for event in events] == [ACCESS_LOGGER] * 3 + [
        "authsvc.server"
    ]
    stream.close()


def test_direct_and_logging_paths_give_the_same_fields(
    stdout_packets: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    access_logger_at_info: None,
) -> None:
    reader, writer = stdout_packets
    token = bind_call(*_call_fields(7))
    try:
        # Through logging, as when no real stdout is there.
        monkeypatch.setattr(ops_logging, "_direct_access", None)
        captured = io.StringIO()
        handler = logging.StreamHandler(captured)
        handler.setFormatter(json_formatter())
        handler.addFilter(ops_logging._CallFields())
        logger = logging.getLogger(ACCESS_LOGGER)
        logger.addHandler(handler)
        try:
            log_access("UNAUTHENTICATED", "CALLER_KEY_MISSING", 0.00123)
        finally:
            logger.removeHandler(handler)
        # Directly; outside an event loop a line is written at once.
        direct = ops_logging._DirectAccessLog(writer.fileno(), worker=None)
        monkeypatch.setattr(ops_logging, "_direct_access", direct)
        log_access("UNAUTHENTICATED", "CALLER_KEY_MISSING", 0.00123)
    finally:
        unbind_call(token)

    through_logging = json.loads(captured.getvalue())
    direct_event = json.loads(reader.recv(65536))
    assert through_logging.keys() == direct_event.keys()
    for event in (through_logging, direct_event):
        del event["time"]
    assert through_logging == direct_event
