"""Prometheus metrics of one server, in its own registry.

The core reports through small hooks (a verification's reason, a JWKS fetch's
result); gauges that describe state (key-set age, pool use) are read when
scraped, so they are never stale. Labels are bounded: method and status come
from the proto, caller names from the operator's configuration, reasons from
`errors.Reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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

        self._rpc_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._verification_children: dict[str | None, Any] = {}
        self.rpcs = Counter(
            "authsvc_rpcs",
            "RPCs handled, by method, caller and gRPC status code.",
            ("method", "caller", "code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "authsvc_rpc_duration_seconds",
            "Time to answer an RPC, from admission to response.",
            ("method", "caller"),
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.verifications = Counter(
            "authsvc_token_verifications",
            "Token verifications (VerifyToken and user mode), by outcome and reason.",
            ("outcome", "reason"),
            registry=self.registry,
        )
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
        self.query_seconds = Histogram(
            "authsvc_db_query_duration_seconds",
            "Time from a connection request to the result, by operation.",
            ("operation",),
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, caller: str, code: str, seconds: float) -> None:
        # The labelled children are looked up once per label set: `labels()`
        # costs several microseconds on every call otherwise.
        key = (method, caller, code)
        children = self._rpc_children.get(key)
        if children is None:
            children = self._rpc_children[key] = (
                self.rpcs.labels(method, caller, code),
                self.rpc_seconds.labels(method, caller),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_verification(self, reason: str | None) -> None:
        child = self._verification_children.get(reason)
        if child is None:
            outcome = "accepted" if reason is None else "rejected"
            child = self.verifications.labels(outcome, reason or "")
            self._verification_children[reason] = child
        child.inc()

    def observe_jwks_fetch(self, ok: bool) -> None:
        self.jwks_fetches.labels("ok" if ok else "failed").inc()

    def observe_query(self, operation: str, seconds: float) -> None:
        self.query_seconds.labels(operation).observe(seconds)

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
