"""Prometheus metrics of one server, in its own registry.

The core reports through small hooks (a verification's reason, a JWKS fetch's
result); gauges that describe state (key-set age, pool use) are read when
scraped, so they are never stale. Labels are bounded: method and status come
from the proto, caller names from the operator's configuration, reasons from
`errors.Reason`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Metric,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from authsvc.tokens.cache import VerifiedTokenCache

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        # A `_created` timestamp series beside every counter and histogram
        # doubles what is scraped and stored for nothing Fly's Prometheus uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)

        # Counted on every call: plain numbers in our own collector, 0.5 µs
        # a call where prometheus_client's labelled Counter and Histogram
        # took 5.9 (each child takes a lock per update).
        self.calls = _CallStats()
        self.registry.register(self.calls)
        self.jwks_fetches = Counter(
            "authsvc_jwks_fetches",
            "JWKS fetches, by result (ok or failed).",
            ("result",),
            registry=self.registry,
        )
        self.keyset_age = Gauge(
            "authsvc_jwks_age_seconds",
            "Seconds since the key set was last fetched (NaN before the first).",
            registry=self.registry,
        )
        self.keyset_keys = Gauge(
            "authsvc_jwks_keys", "Usable keys in the key set.", registry=self.registry
        )
        self.pool_size = Gauge(
            "authsvc_db_pool_connections",
            "Open database connections.",
            registry=self.registry,
        )
        self.pool_in_use = Gauge(
            "authsvc_db_pool_in_use",
            "Connections running a request.",
            registry=self.registry,
        )
        self.pool_waiting = Gauge(
            "authsvc_db_pool_waiting",
            "Requests waiting for a connection.",
            registry=self.registry,
        )
        self.pool_max = Gauge(
            "authsvc_db_pool_max", "The pool's maximum size.", registry=self.registry
        )
        self.pooler = Gauge(
            "authsvc_db_pooler",
            "1 for the pooler mode in use: transaction (no prepared statements) or direct.",
            ("mode",),
            registry=self.registry,
        )

    def observe_rpc(self, method: str, caller: str, code: str, seconds: float) -> None:
        calls = self.calls
        key = (method, caller, code)
        calls.rpcs[key] = calls.rpcs.get(key, 0) + 1
        calls.rpc_seconds.observe((method, caller), seconds)

    def observe_verification(self, reason: str | None) -> None:
        verifications = self.calls.verifications
        verifications[reason] = verifications.get(reason, 0) + 1

    def observe_jwks_fetch(self, ok: bool) -> None:
        self.jwks_fetches.labels("ok" if ok else "failed").inc()

    def observe_query(self, operation: str, seconds: float) -> None:
        self.calls.query_seconds.observe((operation,), seconds)

    def track_keyset(self, age: Callable[[], float], keys: Callable[[], int]) -> None:
        self.keyset_age.set_function(age)
        self.keyset_keys.set_function(lambda: float(keys()))

    def track_pool(
        self,
        size: Callable[[], int],
        in_use: Callable[[], int],
        waiting: Callable[[], int],
        maximum: int,
        pooled: bool,
    ) -> None:
        self.pool_size.set_function(lambda: float(size()))
        self.pool_in_use.set_function(lambda: float(in_use()))
        self.pool_waiting.set_function(lambda: float(waiting()))
        self.pool_max.set(maximum)
        self.pooler.labels("transaction" if pooled else "direct").set(1)

    def track_token_cache(self, cache: VerifiedTokenCache) -> None:
        self.registry.register(_TokenCacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Series:
    """One label set's counts per bucket (not cumulative; the last is +Inf)
    and the sum of what it observed."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.total = 0.0


class _Histograms:
    """One histogram per label set, updated from the event loop only."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], _Series] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series(len(self.bounds) + 1)
        # `le` buckets: a value equal to a bound is counted in that bound's.
        series.counts[bisect_left(self.bounds, value)] += 1
        series.total += value

    def family(
        self, name: str, documentation: str, labels: tuple[str, ...]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=labels)
        edges = [_le(b) for b in self.bounds] + ["+Inf"]
        for values, series in self.series.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, series.counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(list(values), buckets, series.total)
        return family


class _CallStats(Collector):
    """What every call updates: RPCs, their durations, verifications and
    query durations. Scrapes run on the same event loop, so no lock."""

    def __init__(self) -> None:
        self.rpcs: dict[tuple[str, str, str], int] = {}
        self.rpc_seconds = _Histograms(RPC_BUCKETS)
        self.verifications: dict[str | None, int] = {}
        self.query_seconds = _Histograms(QUERY_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        rpcs = CounterMetricFamily(
            "authsvc_rpcs",
            "RPCs handled, by method, caller and gRPC status code.",
            labels=("method", "caller", "code"),
        )
        for labels, count in self.rpcs.items():
            rpcs.add_metric(list(labels), count)
        yield rpcs
        yield self.rpc_seconds.family(
            "authsvc_rpc_duration_seconds",
            "Time to answer an RPC, from admission to response.",
            ("method", "caller"),
        )
        verifications = CounterMetricFamily(
            "authsvc_token_verifications",
            "Token verifications (VerifyToken and user mode), by outcome and reason.",
            labels=("outcome", "reason"),
        )
        for reason, count in self.verifications.items():
            outcome = "accepted" if reason is None else "rejected"
            verifications.add_metric([outcome, reason or ""], count)
        yield verifications
        yield self.query_seconds.family(
            "authsvc_db_query_duration_seconds",
            "Time from a connection request to the result, by operation.",
            ("operation",),
        )


class _TokenCacheCollector(Collector):
    """The verified-token cache's own counts, read when scraped."""

    def __init__(self, cache: VerifiedTokenCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        yield GaugeMetricFamily(
            "authsvc_token_cache_entries",
            "Verified tokens held in the cache.",
            value=len(cache),
        )
        yield GaugeMetricFamily(
            "authsvc_token_cache_bytes",
            "Estimated memory of the cached tokens (AUTHSVC_TOKEN_CACHE_MB bounds it).",
            value=cache.bytes,
        )
        yield GaugeMetricFamily(
            "authsvc_token_cache_max_entries",
            "The cache's bound (AUTHSVC_TOKEN_CACHE_ENTRIES; 0: off).",
            value=cache.max_entries,
        )
        lookups = CounterMetricFamily(
            "authsvc_token_cache_lookups",
            "Cache lookups by result; hit ratio = hit / (hit + miss).",
            labels=("result",),
        )
        lookups.add_metric(("hit",), cache.hits)
        lookups.add_metric(("miss",), cache.misses)
        yield lookups


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client's own histograms spell it."""
    spelled: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return spelled
