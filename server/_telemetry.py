"""OpenTelemetry traces and metrics: Prometheus on ``/metrics``, OTLP when configured.

The providers are private to one application (not the global ones), so several
servers in one process — as in the tests — do not mix their numbers. OTLP export
switches on when the standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables are set;
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` are honoured.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from temporal_shield.codec import GeneratedDataKey, KeyProvider, KeyStats

from ._latency import LatencyHistogram, PeriodicReader, PrometheusReader

if TYPE_CHECKING:
    from ._service import Outcome

TRACE_ID = web.RequestKey("temporal_shield_trace_id", str)
SCOPE = "temporal_shield.server"


def _otlp(env: Mapping[str, str], signal: str) -> bool:
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


class Telemetry:
    """The server's meters and tracer."""

    def __init__(
        self,
        stats: KeyStats,
        *,
        env: Mapping[str, str] | None = None,
        span_processor: SpanProcessor | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Create providers, instruments and exporters.

        Args:
            stats: Key-cache counters, exported as observable counters.
            env: Environment (default :data:`os.environ`).
            span_processor: An extra span processor (turns tracing on), e.g. an
                in-memory exporter in tests.
            labels: Labels added to every Prometheus series (a worker's
                ``worker="k"``: processes behind one port keep distinct series).
        """
        env = os.environ if env is None else env
        resource = Resource.create(
            {"service.name": env.get("OTEL_SERVICE_NAME", "temporal-shield-codec-server")}
        )
        self.registry = CollectorRegistry()
        self.latency = LatencyHistogram(InstrumentationScope(SCOPE), resource)
        readers: list[MetricReader] = [PrometheusReader(self.latency, registry=self.registry)]
        if labels:
            self.registry = _ConstantLabels(self.registry, labels)
        if _otlp(env, "METRICS"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicReader(self.latency, OTLPMetricExporter()))
        # Exemplars cost more than the rest of a request's metrics; traces carry
        # the same correlation (and the audit record has the trace id).
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, exemplar_filter=AlwaysOffExemplarFilter()
        )
        self.tracer_provider = TracerProvider(resource=resource)
        # Spans are only built when something exports them: an unexported span
        # still costs tens of microseconds per request.
        self.tracing = _otlp(env, "TRACES") or span_processor is not None
        if span_processor is not None:
            self.tracer_provider.add_span_processor(span_processor)
        if _otlp(env, "TRACES"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.tracer_provider.get_tracer(SCOPE)
        meter = self.meter_provider.get_meter(SCOPE)
        # Counters are plain dictionaries on the hot path, read by observable
        # instruments at collection time: the SDK's synchronous add() costs tens
        # of microseconds per call, more than the decryption itself.
        self._requests: Counter[tuple[str, str, int]] = Counter()
        self._payloads: Counter[tuple[str, str]] = Counter()
        self._refusals: Counter[tuple[str, str]] = Counter()
        meter.create_observable_counter(
            "codec_requests",
            callbacks=[
                lambda _: [
                    Observation(n, {"operation": op, "decision": d, "status": str(st)})
                    for (op, d, st), n in list(self._requests.items())
                ]
            ],
            unit="1",
            description="Codec requests by operation, decision and status",
        )
        meter.create_observable_counter(
            "codec_payloads",
            callbacks=[
                lambda _: [
                    Observation(n, {"operation": op, "result": r})
                    for (op, r), n in list(self._payloads.items())
                ]
            ],
            unit="1",
            description="Payloads by operation and result",
        )
        meter.create_observable_counter(
            "codec_limit_refusals",
            callbacks=[
                lambda _: [
                    Observation(n, {"operation": op, "limit": limit})
                    for (op, limit), n in list(self._refusals.items())
                ]
            ],
            unit="1",
            description="Payloads refused by a work budget (decoded bytes, KMS calls)",
        )

        def observe(*fields: str) -> Any:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                snapshot = stats.snapshot()
                return [Observation(snapshot[f], {"kind": f}) for f in fields]

            return callback

        meter.create_observable_counter(
            "kms_calls",
            callbacks=[observe("kms_generate_calls", "kms_decrypt_calls", "kms_errors")],
            unit="1",
            description="Key-provider (KMS) calls",
        )
        meter.create_observable_counter(
            "data_key_cache",
            callbacks=[
                observe(
                    "encrypt_cache_hits",
                    "encrypt_cache_misses",
                    "decrypt_cache_hits",
                    "decrypt_cache_misses",
                    "failed_cache_hits",
                )
            ],
            unit="1",
            description="Data-key cache hits and misses",
        )

    def trace_id(self, headers: Mapping[str, str]) -> str:
        """The caller's trace id (W3C ``traceparent``) or a fresh random one.

        Used when no span is recorded, so the audit record still correlates.
        """
        if "traceparent" in headers:
            context = propagate.extract(dict(headers))
            parent = trace.get_current_span(context).get_span_context()
            if parent.is_valid:
                return format(parent.trace_id, "032x")
        # Like the SDK's own id generator: random, not secret (and as text at
        # once: half the cost of formatting a 128-bit integer).
        return random.randbytes(16).hex()  # noqa: S311 - an id, not a secret

    @contextmanager
    def span(self, name: str, request: web.Request) -> Iterator[trace.Span]:
        """A server span for ``request`` (continuing a ``traceparent`` if sent).

        Only called when :attr:`tracing` is on; sets the request's trace id.
        """
        context = propagate.extract(dict(request.headers))
        with self.tracer.start_as_current_span(
            name, context=context, kind=trace.SpanKind.SERVER
        ) as span:
            request[TRACE_ID] = format(span.get_span_context().trace_id, "032x")
            yield span

    def request_done(
        self,
        operation: str,
        decision: str,
        status: int,
        outcome: Outcome | None,
        started: float,
    ) -> None:
        """Record one finished request."""
        self._requests[(operation, decision, status)] += 1
        self.latency.observe(operation, time.perf_counter() - started)
        if outcome is not None:
            payloads = self._payloads
            if outcome.decoded:
                payloads[(operation, "decoded")] += outcome.decoded
            if outcome.encoded:
                payloads[(operation, "encoded")] += outcome.encoded
            if outcome.denied:
                payloads[(operation, "denied")] += outcome.denied
            if outcome.passed_through:
                # Results partition the payloads: plaintext and other codecs' ciphertext.
                if outcome.passed_through - outcome.foreign:
                    payloads[(operation, "passed_through")] += (
                        outcome.passed_through - outcome.foreign
                    )
                if outcome.foreign:
                    payloads[(operation, "foreign_encryption")] += outcome.foreign
            if outcome.failed:
                payloads[(operation, "failed")] += outcome.failed
            if outcome.withheld:
                payloads[(operation, "withheld")] += outcome.withheld
            if outcome.limits:
                for limit, count in outcome.limits.items():
                    self._refusals[(operation, limit)] += count

    def prometheus(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def traced(self, provider: KeyProvider) -> KeyProvider:
        """Wrap ``provider`` so that every KMS round trip is a client span."""
        return _TracedProvider(provider, self.tracer) if self.tracing else provider

    def shutdown(self) -> None:
        """Flush exporters."""
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


class _ConstantLabels(CollectorRegistry):
    """Another registry's series, each with the same extra labels."""

    def __init__(self, inner: CollectorRegistry, labels: Mapping[str, str]) -> None:
        super().__init__(auto_describe=False)
        self._inner = inner
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            family.samples = [
                sample._replace(labels={**sample.labels, **self._labels})
                for sample in family.samples
            ]
            yield family


class _TracedProvider(KeyProvider):
    def __init__(self, inner: KeyProvider, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    @property
    def primary_key_id(self) -> str | None:
        return self._inner.primary_key_id

    def can_decrypt(self, key_id: str) -> bool:
        return self._inner.can_decrypt(key_id)

    async def generate_data_key(self, namespace: str) -> GeneratedDataKey:
        with self._tracer.start_as_current_span("kms GenerateDataKey", kind=trace.SpanKind.CLIENT):
            return await self._inner.generate_data_key(namespace)

    async def decrypt_data_key(self, key_id: str, wrapped: bytes, namespace: str) -> bytes:
        with self._tracer.start_as_current_span("kms Decrypt", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("temporal_shield.key_id", key_id)
            return await self._inner.decrypt_data_key(key_id, wrapped, namespace)

    async def check(self) -> None:
        await self._inner.check()
