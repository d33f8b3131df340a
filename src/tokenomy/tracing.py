"""OpenTelemetry traces of the request path, when an exporter is configured.

One span per request (``tokenomy.request``) with a child per step: the stages before the
vendor call (``tokenomy.admit``, ``tokenomy.reserve``), each vendor attempt
(``tokenomy.upstream``) and the settlement (``tokenomy.settle``). With no exporter the
pipeline holds no tracer and pays one ``None`` check per step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from tokenomy.config import TracingConfig

log = logging.getLogger(__name__)

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def build_tracer_provider(cfg: TracingConfig, env: Mapping[str, str]) -> Any | None:
    """A TracerProvider exporting as configured, or None when tracing is off."""
    mode = cfg.exporter
    if mode == "auto":
        mode = "otlp" if any(env.get(v) for v in _ENDPOINT_VARS) else "none"
    if mode == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("tracing is configured but the 'otel' extra is not installed; no traces")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: Any = OTLPSpanExporter()  # endpoint and headers from OTEL_* variables
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


#: What :func:`child_span` gives when nothing is traced: one shared, stateless context.
_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def child_span(
    tracer: Any | None, parent: Any | None, name: str, **attributes: Any
) -> contextlib.AbstractContextManager[Any | None]:
    """A span under ``parent`` (nothing at all without a tracer); errors are recorded."""
    if tracer is None or parent is None:
        return _NO_SPAN
    return _span(tracer, parent, name, attributes)


@contextlib.contextmanager
def _span(tracer: Any, parent: Any, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    span = tracer.start_span(
        name, context=trace.set_span_in_context(parent), attributes=_clean(attributes)
    )
    try:
        yield span
    except BaseException as e:
        span.record_exception(e)
        span.set_attribute("error.type", type(e).__name__)
        raise
    finally:
        span.end()


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
