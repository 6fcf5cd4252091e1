"""Prometheus metrics of the HTTP layer, in the standard text exposition format.

Requests are counted per route template (``/v1/stores/{store}/push``, never
the raw path, so a client cannot grow the series without bound), method and
status (``0`` when the client left before its answer); latency goes to a histogram per route. Gauges read the live values
(waiting long-polls, open connections, storage calls queued) when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets (seconds): sub-millisecond reads up to long-polls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Tally:
    """A count that only grows, bumped on the event loop's thread."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, amount: int = 1) -> None:
        """Add ``amount`` (not negative)."""
        self.value += amount


#: "applied" outcomes answered by pushes in this process (a re-sent change is
#: answered "applied" again with its first seq, and counted again).
changes_applied = Tally()
#: Storage failures answered as ``storage_unavailable`` in this process.
storage_errors = Tally()


class _LiveValues(Collector):
    """Values read when scraped rather than kept up to date."""

    def __init__(
        self,
        gauges: dict[str, tuple[str, Callable[[], float]]],
        counters: dict[str, tuple[str, Callable[[], float]]],
    ) -> None:
        self.gauges = gauges
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        for name, (text, read) in self.gauges.items():
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], read())
            yield gauge
        for name, (text, read) in self.counters.items():
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], read())
            yield counter
        applied = CounterMetricFamily(
            "idsync_push_applied_outcomes",
            "Changes answered as applied by pushes (a re-sent change counts each time).",
        )
        applied.add_metric([], changes_applied.value)
        yield applied
        errors = CounterMetricFamily(
            "idsync_storage_errors", "Storage failures answered as storage_unavailable."
        )
        errors.add_metric([], storage_errors.value)
        yield errors


class ServerMetrics:
    """The metrics of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "idsync_http_requests",
            "HTTP requests, by route template, method and status (0: the client left "
            "before an answer).",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "idsync_http_request_duration_seconds",
            "Time from a request's start to its answer, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "idsync_storage_queue_refusals",
            "Requests answered 503 storage_busy because the storage queue was full.",
            registry=self.registry,
        )
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.registry.register(_LiveValues(self._gauges, self._counters))
        # Each request's series, found once: a label look-up costs more than
        # the count itself, and one write may answer thousands of requests.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as gauge ``name`` at each scrape."""
        self._gauges[name] = (text, read)

    def counter(self, name: str, text: str, read: Callable[[], float]) -> None:
        """Report ``read()``, a running total, as counter ``name`` (exposed as
        ``name_total``) at each scrape."""
        self._counters[name] = (text, read)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
