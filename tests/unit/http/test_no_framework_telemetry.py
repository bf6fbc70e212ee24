"""The web framework's own telemetry stays off, whatever OpenTelemetry set-up the host has.

FastAPI (0.16x) traces every request, records request metrics, and logs validation failures and
unhandled exceptions with their messages; once a global OpenTelemetry provider is configured
(an SDK in the environment, an operator injecting ``OTEL_*`` variables, or
``FASTAPI_OTEL_AUTO_CONFIGURE=true``) that data would leave the proxy outside its allowlist. The
proxy's only telemetry is its own metrics and log line. Here a global tracer provider that
records every span it is asked for stands in for a configured SDK.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, Span, Tracer, TracerProvider

from proxy.http.app import create_app
from proxy.settings import Settings


class RecordingTracer(Tracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> Span:
        self.names.append(name)
        return NonRecordingSpan(INVALID_SPAN_CONTEXT)

    @contextmanager  # the API's own decorator is private; the context manager is the same
    def start_as_current_span(  # type: ignore[override]
        self, name: str, *args: Any, **kwargs: Any
    ) -> Iterator[Span]:
        self.names.append(name)
        yield NonRecordingSpan(INVALID_SPAN_CONTEXT)


class RecordingProvider(TracerProvider):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.asked = 0

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        self.asked += 1
        return RecordingTracer(self.names)


@pytest.fixture
def configured_tracing(monkeypatch: pytest.MonkeyPatch) -> RecordingProvider:
    provider = RecordingProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    return provider


async def _requests(paths: Sequence[tuple[str, str]]) -> list[int]:
    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        statuses = []
        for method, path in paths:
            answer = await client.request(method, path, json={"model": "x", "canary": "c4n4ry"})
            statuses.append(answer.status_code)
        return statuses


async def test_a_configured_tracer_sees_no_request(configured_tracing: RecordingProvider) -> None:
    statuses = await _requests(
        [
            ("POST", "/v1/chat/completions"),  # the hot path
            ("POST", "/v1/embeddings"),  # through the router
            ("GET", "/v1/no-such-path"),
        ]
    )
    assert all(status >= 400 for status in statuses)  # answered, by the proxy's own handlers
    assert configured_tracing.names == []
    assert configured_tracing.asked == 0


def test_the_framework_is_told_to_keep_its_telemetry_off() -> None:
    app = create_app(Settings())
    config = getattr(app, "_telemetry", None)
    if config is None:  # a FastAPI without native telemetry has nothing to turn off
        assert not hasattr(app, "_native_telemetry")
        return
    for key in ("tracing", "metrics", "logs", "operation_spans", "auto_configure"):
        assert config[key] is False, key
