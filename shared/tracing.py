"""OpenTelemetry tracing across the flow (POST -> enqueue -> worker job -> provider call -> terminal event).

On only when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: otherwise nothing of
OpenTelemetry is imported and every helper here is a no-op costing one boolean test. The packages are the
optional extra `sse-relay[otel]`; the exporter, sampler and batching read the standard OTEL_* variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from shared.logging import redact_query

log = logging.getLogger("sse_relay.tracing")

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_provider: Any = None  # the SDK's TracerProvider once set up in this process


def configured() -> bool:
    return any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def active() -> bool:
    return _provider is not None


def setup(service_name: str) -> bool:
    """Exports this process's spans over OTLP/HTTP when configured; -> whether tracing is on."""
    global _provider
    if _provider is not None or not configured():
        return _provider is not None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: pip install 'sse-relay[otel]'"
        )
        return False
    # OTEL_SERVICE_NAME, when set, names the service; the process kind is only the default.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: spans exported over OTLP/HTTP as %s", provider.resource.attributes.get("service.name"))
    return True


def shutdown() -> None:
    """Flushes the spans still batched (the last job's spans would otherwise be lost at exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def instrument_app(app: Any) -> None:
    """Server spans for the API's routes; per-frame `send` spans of a stream are left out (thousands per answer)."""
    if not active():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="/metrics,/healthz,/readyz",
        exclude_spans=["send", "receive"],
        server_request_hook=_redact_url_attributes,
    )


# Server span attributes that carry the request's query string, where a browser's read token travels.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query")


def _redact_url_attributes(span: Any, scope: dict[str, Any]) -> None:
    """Runs after the instrumentation set the span's attributes: `?token=` never reaches the exporter."""
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact_query(value))


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, maybe `tracestate`), for the job; {} when off."""
    if not active():
        return {}
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers


# Off: one shared do-nothing context manager, not a generator-based one per call.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    kind: str = "INTERNAL",
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    start_ns: int | None = None,
) -> AbstractContextManager[Any]:
    """A span around a step (None when tracing is off); `parent`: a carrier from another process (the job's);
    `start_ns`: when the step began, if before now (epoch nanoseconds).

    An exception leaving the span is recorded on it, as the SDK does by default."""
    if not active():
        return _OFF
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    tracer = trace.get_tracer("sse_relay")
    context = extract(dict(parent)) if parent else None
    return tracer.start_as_current_span(
        name, context=context, kind=trace.SpanKind[kind], attributes=attributes, start_time=start_ns
    )


def set_attributes(current: Any, attributes: Mapping[str, Any]) -> None:
    if current is not None:
        current.set_attributes(attributes)


def mark_error(current: Any, description: str) -> None:
    """An error that does not leave the span as an exception (a generation ending with an error event)."""
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, description))
