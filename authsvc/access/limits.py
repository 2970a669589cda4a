"""Per-caller limits: concurrent calls and a request rate.

Each caller gets its own token bucket and in-flight count, so one app that
misbehaves runs into its own limit and leaves the others alone. A refusal
happens before any work, and says which limit and how long to wait.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from authsvc.errors import Reason, ResourceExhausted

# A bucket holds one second's worth of requests: bursts up to the rate.
BURST_SECONDS = 1.0


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a request may go now, else the seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class CallerLimiter:
    """The limits of one caller; `max_concurrent`/`rate` 0 mean unlimited."""

    name: str
    max_concurrent: int
    rate: float
    in_flight: int = 0
    _bucket: _Bucket | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.reconfigure(self.max_concurrent, self.rate)

    def reconfigure(self, max_concurrent: int, rate: float) -> None:
        """New limits for the same caller; calls in flight stay counted."""
        self.max_concurrent = max_concurrent
        self.rate = rate
        self._bucket = None
        if rate > 0:
            capacity = max(1.0, rate * BURST_SECONDS)
            self._bucket = _Bucket(rate, capacity, capacity, time.monotonic())

    def acquire(self) -> None:
        """Count one call in, or raise ResourceExhausted saying which limit."""
        if self.max_concurrent and self.in_flight >= self.max_concurrent:
            raise ResourceExhausted(
                Reason.TOO_MANY_CONCURRENT_CALLS,
                f"caller {self.name!r} already has {self.in_flight} calls in flight "
                f"(limit {self.max_concurrent}); retry when one finishes",
                {"limit": str(self.max_concurrent), "caller": self.name},
            )
        if self._bucket is not None:
            wait = self._bucket.take(time.monotonic())
            if wait:
                retry_ms = max(1, math.ceil(wait * 1000))
                raise ResourceExhausted(
                    Reason.RATE_LIMITED,
                    f"caller {self.name!r} is over its limit of {self.rate:g} "
                    f"requests per second; retry in {retry_ms} ms",
                    {
                        "limit": f"{self.rate:g}",
                        "retry_after_ms": str(retry_ms),
                        "caller": self.name,
                    },
                )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
