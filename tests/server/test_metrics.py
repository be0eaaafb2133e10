"""The request-latency histogram: bucket semantics and its Prometheus exposition."""

from __future__ import annotations

import re

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from temporal_shield.codec import KeyStats
from temporal_shield.server import Telemetry
from temporal_shield.server._latency import BOUNDS


def _series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        match = re.match(rf'{name}\{{(?:le="([^"]+)",)?operation="(\w+)"[^}}]*\}} (\S+)', line)
        if match:
            out[f"{match.group(2)}:{match.group(1) or ''}"] = float(match.group(3))
    return out


def test_latency_buckets_are_upper_inclusive_and_cumulative_in_prometheus() -> None:
    telemetry = Telemetry(KeyStats())
    for seconds in (0.0004, 0.0005, 0.0007, 0.001, 0.02, 30.0):
        telemetry.latency.observe("decode", seconds)
    telemetry.latency.observe("encode", 0.003)
    metric = telemetry.latency.metric()
    assert metric is not None
    points = [p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)]
    point = next(p for p in points if (p.attributes or {}).get("operation") == "decode")
    assert list(point.explicit_bounds) == list(BOUNDS)
    # (.., 0.0005] holds 0.0004 and 0.0005; (0.0005, 0.001] holds 0.0007 and 0.001.
    assert point.bucket_counts[:2] == [2, 2]
    assert point.bucket_counts[-1] == 1  # 30 s is over the last bound
    assert point.count == 6
    assert point.min == 0.0004
    assert point.max == 30.0

    text = telemetry.prometheus()[0].decode()
    buckets = _series(text, "codec_request_duration_seconds_bucket")
    assert buckets["decode:0.0005"] == 2
    assert buckets["decode:0.001"] == 4
    assert buckets["decode:0.025"] == 5
    assert buckets["decode:+Inf"] == 6
    assert buckets["encode:0.005"] == 1
    assert buckets["encode:0.0025"] == 0
    counts = _series(text, "codec_request_duration_seconds_count")
    assert counts == {"decode:": 6, "encode:": 1}
    sums = _series(text, "codec_request_duration_seconds_sum")
    assert abs(sums["decode:"] - 30.0226) < 1e-9
    telemetry.shutdown()


def test_no_histogram_before_the_first_request() -> None:
    telemetry = Telemetry(KeyStats())
    assert telemetry.latency.metric() is None
    assert "codec_request_duration" not in telemetry.prometheus()[0].decode()
    telemetry.shutdown()
