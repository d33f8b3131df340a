"""OpenTelemetry: one request span with a child per step, attributes that say what happened."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import Gateway
from tokenomy.config import TracingConfig
from tokenomy.tracing import build_tracer_provider


@pytest.fixture
def spans(gateway: Gateway) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway.services.pipeline.tracer = provider.get_tracer("test")
    yield exporter
    gateway.services.pipeline.tracer = None


def test_request_span_and_its_steps(gateway: Gateway, spans: InMemorySpanExporter) -> None:
    key = gateway.new_key(org_id=gateway.new_org(10**9))
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "dead-first", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    gateway.wait_events(1, request_id=r.headers["x-request-id"])
    done = {s.name: s for s in spans.get_finished_spans()}
    root = done["tokenomy.request"]
    assert root.attributes is not None
    assert root.attributes["tokenomy.request_id"] == r.headers["x-request-id"]
    assert root.attributes["tokenomy.deployment"] == "sim-backup/alive-b"
    assert root.attributes["tokenomy.cost"] == r.headers["x-tokenomy-cost"]
    assert int(root.attributes["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
    steps = [s for s in spans.get_finished_spans() if s.parent is not None]
    assert all(s.parent.span_id == root.context.span_id for s in steps)  # type: ignore[union-attr]
    names = [s.name for s in steps]
    assert {"tokenomy.admit", "tokenomy.reserve", "tokenomy.settle"} <= set(names)
    upstream = [s for s in steps if s.name == "tokenomy.upstream"]
    # The dead deployment failed first (recorded), then the live one served.
    assert [s.attributes["tokenomy.deployment"] for s in upstream] == [  # type: ignore[index]
        "sim/sim-fail-503",
        "sim-backup/alive-b",
    ]
    assert upstream[0].attributes["error.type"] == "UpstreamError"  # type: ignore[index]


def test_tracing_is_off_unless_configured() -> None:
    assert build_tracer_provider(TracingConfig(), {}) is None
    assert (
        build_tracer_provider(TracingConfig(exporter="none"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
        is None
    )
    provider = build_tracer_provider(
        TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert provider is not None
    provider.shutdown()
