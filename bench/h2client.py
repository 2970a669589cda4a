"""A lean closed-loop gRPC load client that sends a different body per call.

h2load drives gRPC well but sends one body file for every request, so it
cannot give every call its own token. This client can: it speaks just enough
HTTP/2 over asyncio (prebuilt HPACK header block with literal fields, one
HEADERS and one DATA frame per call) that a call costs the client a few tens
of microseconds, against about a hundred for a `grpc.aio` client, so the
client takes less of the machine from the server under test.

A call counts as OK when the response carried a message before the trailers
(gRPC sends none with an error status). The harness checks the bodies with a
real gRPC call before each cell, so this test is enough during the run.

Measurement follows the wall clock: every process warms up until
`--start-at + --warmup`, then measures for `--duration`. The parent prints
`measure-start` and `measure-end` on stdout at those instants (the harness
reads the server's CPU time then), then one JSON line of results.

    python -m bench.h2client --target 127.0.0.1:50051 \
        --path /authsvc.v1.AuthService/VerifyToken --bodies bodies.grpc \
        --header 'authorization: Bearer asvc_...' --order sequential
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MAX_FRAME_BYTES = 16_384  # SETTINGS_MAX_FRAME_SIZE's default; never exceeded
DRAIN_SECONDS = 3.0


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + (struct.pack(">I", stream) + payload)
    )


def _hpack_int(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(text: str) -> bytes:
    raw = text.encode()
    return _hpack_int(len(raw), 7) + raw


def _data_frames(stream_id: bytes, body: bytes) -> bytes:
    """DATA frames of at most the protocol's default frame size, the last
    one ending the stream."""
    if len(body) <= MAX_FRAME_BYTES:
        return (
            struct.pack(">I", len(body))[1:]
            + bytes((DATA, END_STREAM))
            + (stream_id + body)
        )
    chunks = [
        body[i : i + MAX_FRAME_BYTES] for i in range(0, len(body), MAX_FRAME_BYTES)
    ]
    return b"".join(
        struct.pack(">I", len(chunk))[1:]
        + bytes((DATA, END_STREAM if last else 0))
        + stream_id
        + chunk
        for last, chunk in ((i == len(chunks) - 1, c) for i, c in enumerate(chunks))
    )


def header_block(authority: str, path: str, extra: list[tuple[str, str]]) -> bytes:
    """Request headers as one HPACK block that never touches the dynamic table."""
    block = bytes((0x83, 0x86))  # :method POST, :scheme http (static table)
    block += _hpack_int(4, 4) + _hpack_string(path)  # :path, literal value
    block += _hpack_int(1, 4) + _hpack_string(authority)  # :authority
    fields = [("content-type", "application/grpc"), ("te", "trailers"), *extra]
    for name, value in fields:
        block += b"\x00" + _hpack_string(name) + _hpack_string(value)
    return block


def read_bodies(path: str) -> list[bytes]:
    """Length-prefixed gRPC messages, concatenated, as written by the harness."""
    with open(path, "rb") as file:
        data = file.read()
    bodies, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset + 1)
        bodies.append(data[offset : offset + 5 + length])
        offset += 5 + length
    return bodies


@dataclass
class Tally:
    window: tuple[float, float]
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    sent: int = 0
    wrapped: int = 0


class _Picker:
    """Which body the next call sends: in order (each once, if there are
    enough), or at random from the pool."""

    def __init__(self, bodies: list[bytes], order: str, index: int, step: int) -> None:
        self._bodies = bodies
        self._random = order == "random"
        self._next = index
        self._step = step
        self.wrapped = 0

    def pick(self) -> bytes:
        if self._random:
            return random.choice(self._bodies)  # noqa: S311 (load shape, not secrets)
        position = self._next
        self._next += self._step
        if position >= len(self._bodies):
            self.wrapped += 1
            position %= len(self._bodies)
        return self._bodies[position]


class _Connection(asyncio.Protocol):
    def __init__(
        self, block: bytes, streams: int, picker: _Picker, tally: Tally, stop_at: float
    ) -> None:
        self._block = struct.pack(">I", len(block))[1:] + bytes((HEADERS, END_HEADERS))
        self._block_payload = block
        self._streams = streams
        self._picker = picker
        self._tally = tally
        self._stop_at = stop_at
        self._transport: Any = None
        self._buffer = b""
        self._next_stream = 1
        self._started: dict[int, float] = {}
        self._got_message: set[int] = set()
        self._send_window = DEFAULT_WINDOW
        self._stream_window = DEFAULT_WINDOW
        self._pending: list[tuple[bytes, int]] = []
        self._received = 0
        self._out: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0) + struct.pack(
            ">HI", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW
        )
        transport.write(
            PREFACE
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(
                WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
            )
        )
        for _ in range(self._streams):
            self._start_call()
        self._flush()

    def _start_call(self) -> None:
        now = time.perf_counter()
        if now >= self._stop_at:
            if not self._started and not self.done.done():
                self.done.set_result(None)
            return
        body = self._picker.pick()
        if len(body) > self._stream_window:
            raise RuntimeError("request body larger than the server's stream window")
        stream = self._next_stream
        self._next_stream += 2
        sid = struct.pack(">I", stream)
        frames = self._block + sid + self._block_payload + _data_frames(sid, body)
        self._started[stream] = now
        self._tally.sent += 1
        if self._pending or len(body) > self._send_window:
            self._pending.append((frames, len(body)))
            return
        self._send_window -= len(body)
        self._out.append(frames)

    def _flush(self) -> None:
        if self._out:
            self._transport.write(b"".join(self._out))
            self._out.clear()

    def _finish(self, stream: int, ok: bool) -> None:
        started = self._started.pop(stream, None)
        self._got_message.discard(stream)
        if started is None:
            return
        now = time.perf_counter()
        low, high = self._tally.window
        if low <= now <= high:
            if ok:
                self._tally.ok += 1
                self._tally.latencies.append(now - started)
            else:
                self._tally.errors += 1
        self._start_call()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        offset, size = 0, len(buffer)
        while size - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if size - offset < 9 + length:
                break
            kind = buffer[offset + 3]
            flags = buffer[offset + 4]
            stream = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & MAX_WINDOW
            payload_at = offset + 9
            offset = payload_at + length
            if kind == DATA:
                self._received += length
                if length > 5:
                    self._got_message.add(stream)
                if flags & END_STREAM:
                    self._finish(stream, stream in self._got_message)
            elif kind == HEADERS:
                if flags & END_STREAM:
                    self._finish(stream, stream in self._got_message)
            elif kind == RST_STREAM:
                self._finish(stream, False)
            elif kind == SETTINGS and not flags & ACK:
                self._apply_settings(buffer[payload_at:offset])
                self._out.append(_frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                self._out.append(_frame(PING, ACK, 0, buffer[payload_at:offset]))
            elif kind == WINDOW_UPDATE and stream == 0:
                self._send_window += int.from_bytes(buffer[payload_at:offset], "big")
                self._send_pending()
            elif kind == GOAWAY:
                self._fail_all()
        self._buffer = buffer[offset:]
        if self._received > MAX_WINDOW // 2:
            self._out.append(
                _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received))
            )
            self._received = 0
        self._flush()

    def _apply_settings(self, payload: bytes) -> None:
        for at in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                self._stream_window = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS and value < self._streams:
                raise RuntimeError(f"server allows only {value} streams per connection")

    def _send_pending(self) -> None:
        while self._pending:
            frames, body_length = self._pending[0]
            if body_length > self._send_window:
                return
            self._send_window -= body_length
            self._out.append(frames)
            del self._pending[0]

    def _fail_all(self) -> None:
        for stream in list(self._started):
            self._tally.errors += 1
            self._started.pop(stream)
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all()


async def _run_process(args: argparse.Namespace, index: int) -> dict[str, Any]:
    host, _, port = args.target.rpartition(":")
    extra = [tuple(part.strip() for part in h.split(":", 1)) for h in args.header]
    block = header_block(args.target, args.path, extra)  # type: ignore[arg-type]
    bodies = read_bodies(args.bodies)
    offset = time.time() - time.perf_counter()
    start = args.start_at + args.warmup - offset
    tally = Tally(window=(start, start + args.duration))
    picker = _Picker(bodies, args.order, index, args.processes)
    stop_at = start + args.duration
    loop = asyncio.get_running_loop()

    connections = []
    for _ in range(args.connections // args.processes):
        _, protocol = await loop.create_connection(
            lambda: _Connection(block, args.streams, picker, tally, stop_at),
            host.strip("[]"),
            int(port),
        )
        connections.append(protocol)
    # CPU time of this process inside the measured window only.
    marks: list[float] = []
    for at in (start, stop_at):
        loop.call_later(
            max(0.0, at - time.perf_counter()),
            lambda: marks.append(time.process_time()),
        )
    await asyncio.wait(
        [asyncio.ensure_future(c.done) for c in connections],
        timeout=max(0.0, stop_at - time.perf_counter()) + DRAIN_SECONDS,
    )
    for connection in connections:
        connection.close()
    return {
        "ok": tally.ok,
        "errors": tally.errors,
        "wrapped": picker.wrapped,
        "latencies": tally.latencies,
        "client_cpu_seconds": marks[1] - marks[0] if len(marks) == 2 else None,
    }


def _child(args: argparse.Namespace, index: int, out: Any) -> None:
    result = asyncio.run(_run_process(args, index))
    out.send(result)
    out.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    position = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[position]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop gRPC load client")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--path", required=True, help="/package.Service/Method")
    parser.add_argument("--bodies", required=True, help="file of gRPC messages")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE")
    parser.add_argument(
        "--order", choices=("sequential", "random"), default="sequential"
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="per connection")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    args = parser.parse_args()
    if not args.start_at:
        args.start_at = time.time() + 0.5

    context = multiprocessing.get_context("fork")
    pipes, children = [], []
    for index in range(args.processes):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(args, index, send))
        child.start()
        pipes.append(receive)
        children.append(child)

    for mark, at in (
        ("measure-start", args.start_at + args.warmup),
        ("measure-end", args.start_at + args.warmup + args.duration),
    ):
        time.sleep(max(0.0, at - time.time()))
        say(mark)

    results = [pipe.recv() for pipe in pipes]
    for child in children:
        child.join()
    latencies = sorted(x for r in results for x in r["latencies"])
    ok = sum(r["ok"] for r in results)
    say(
        json.dumps(
            {
                "requests": ok,
                "errors": sum(r["errors"] for r in results),
                "requests_per_second": ok / args.duration,
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "wrapped": sum(r["wrapped"] for r in results),
                "client_cpu_seconds": sum(
                    r["client_cpu_seconds"] or 0 for r in results
                ),
                "client_pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
