"""The request-latency histogram: observed per request, exported by OpenTelemetry readers.

The SDK's synchronous ``Histogram.record`` costs about 4.5 µs per call (context
lookup, attribute validation and hashing, locks), more than decrypting a
payload; the codec server observes every request. So the buckets live here as
plain lists (an increment per request), and the server's metric readers add
them to every collection as a standard OpenTelemetry explicit-bucket histogram
(``_receive_metrics`` is the SDK's documented extension point for readers), so
Prometheus and OTLP see the same ``codec_request_duration`` either way.
Cumulative temporality, like the SDK's default for histograms.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

NAME = "codec_request_duration"
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bucket upper bounds in seconds (sub-millisecond to the UI's patience)."""


@dataclass
class _Series:
    counts: list[int]
    sum: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")


@dataclass
class LatencyHistogram:
    """Request latency in seconds by operation, in fixed buckets."""

    scope: InstrumentationScope
    resource: Resource
    bounds: tuple[float, ...] = BOUNDS
    start_ns: int = field(default_factory=time.time_ns)
    _series: dict[str, _Series] = field(default_factory=dict)

    def observe(self, operation: str, seconds: float) -> None:
        """Count one request (event-loop thread; readers only copy)."""
        series = self._series.get(operation)
        if series is None:
            series = self._series[operation] = _Series([0] * (len(self.bounds) + 1))
        # Bucket i holds values in (bounds[i-1], bounds[i]], as OpenTelemetry's.
        series.counts[bisect_left(self.bounds, seconds)] += 1
        series.sum += seconds
        if seconds < series.min:
            series.min = seconds
        if seconds > series.max:
            series.max = seconds

    def metric(self) -> Metric | None:
        """A snapshot as an OpenTelemetry histogram metric (``None`` before any request)."""
        now = time.time_ns()
        points = []
        for operation, series in list(self._series.items()):
            counts = list(series.counts)
            points.append(
                HistogramDataPoint(
                    attributes={"operation": operation},
                    start_time_unix_nano=self.start_ns,
                    time_unix_nano=now,
                    count=sum(counts),
                    sum=series.sum,
                    bucket_counts=counts,
                    explicit_bounds=list(self.bounds),
                    min=series.min,
                    max=series.max,
                )
            )
        if not points:
            return None
        return Metric(
            name=NAME,
            description="Codec request latency",
            unit="s",
            data=Histogram(
                data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
            ),
        )

    def added_to(self, data: MetricsData | None) -> MetricsData | None:
        """``data`` with this histogram added under its instrumentation scope."""
        metric = self.metric()
        if metric is None:
            return data
        if data is None or not data.resource_metrics:
            return MetricsData(
                [ResourceMetrics(self.resource, [ScopeMetrics(self.scope, [metric], "")], "")]
            )
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope in enumerate(scopes):
            if scope.scope.name == self.scope.name:
                scopes[i] = replace(scope, metrics=[*scope.metrics, metric])
                break
        else:
            scopes.append(ScopeMetrics(self.scope, [metric], ""))
        return MetricsData([replace(first, scope_metrics=scopes), *rest])


class _AddsLatency(MetricReader):
    """Reader mixin: every collection also carries the latency histogram."""

    latency: LatencyHistogram

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        merged = self.latency.added_to(metrics_data)
        # The concrete reader later in the MRO implements it.
        super()._receive_metrics(merged, timeout_millis, **kwargs)  # type: ignore[arg-type,safe-super]


class PrometheusReader(_AddsLatency, PrometheusMetricReader):
    """The Prometheus reader, plus the latency histogram."""

    def __init__(self, latency: LatencyHistogram, **kwargs: Any) -> None:
        """See :class:`PrometheusMetricReader`."""
        self.latency = latency
        super().__init__(**kwargs)


class PeriodicReader(_AddsLatency, PeriodicExportingMetricReader):
    """The periodic (OTLP) reader, plus the latency histogram."""

    def __init__(self, latency: LatencyHistogram, *args: Any, **kwargs: Any) -> None:
        """See :class:`PeriodicExportingMetricReader`."""
        self.latency = latency
        super().__init__(*args, **kwargs)
