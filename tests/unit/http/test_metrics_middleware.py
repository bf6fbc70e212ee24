"""RequestMetricsMiddleware on a bare ASGI interface, read back as a scraper reads the metrics:
one count per answer by route template and status, its duration until the last body byte (a
clock the test moves), a crash or a silent app counted as 500, and other scopes left alone."""

from __future__ import annotations

from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.http import metrics_middleware
from proxy.http.metrics_middleware import RequestMetricsMiddleware
from proxy.observability.metrics import OTHER, Metrics

ROUTES = ["/v1/chat/completions", "/v1/attestation/{model}", "/healthz"]
REQUESTS = "venice_proxy_requests_total"
DURATION = "venice_proxy_request_duration_seconds"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def counted(metrics: Metrics) -> dict[tuple[str, str], float]:
    """``(route, status) -> count`` of every answered request."""
    return {
        (dict(labels)["route"], dict(labels)["status"]): count
        for (name, labels), count in samples(metrics).items()
        if name == REQUESTS
    }


def duration(metrics: Metrics, route: str) -> tuple[float | None, float | None]:
    """The duration histogram's count and sum for ``route``."""
    found = samples(metrics)
    return (
        found.get((f"{DURATION}_count", (("route", route),))),
        found.get((f"{DURATION}_sum", (("route", route),))),
    )


class Clock:
    """``time.perf_counter`` for the middleware: the time is what the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(100.0)
    fake_time = SimpleNamespace(perf_counter=clock.perf_counter)
    monkeypatch.setattr(metrics_middleware, "time", fake_time)
    return clock


class Peer:
    def __init__(self, body: bytes = b"") -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.body = body

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.body, "more_body": False}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)


def http(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": []}


def metrics() -> Metrics:
    return Metrics(routes=ROUTES, process_metrics=False)


async def test_a_streamed_answer_counts_once_with_its_time_to_the_last_body_byte(
    clock: Clock,
) -> None:
    seen = metrics()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b'{"model": "m"}'  # the client's own receive
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock.now = 101.0
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert counted(seen) == {}  # not yet: the stream goes on
        clock.now = 103.5
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})
        assert counted(seen) == {("/v1/chat/completions", "200"): 1}  # at the last byte
        clock.now = 110.0  # what the app does after the answer is not the answer's time

    peer = Peer(b'{"model": "m"}')
    await RequestMetricsMiddleware(app, seen)(http("/v1/chat/completions"), peer.receive, peer.send)
    assert [m["type"] for m in peer.sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert peer.sent[1]["body"] == b"data: 1\n\n"  # every message passed on unchanged
    assert counted(seen) == {("/v1/chat/completions", "200"): 1}
    assert duration(seen, "/v1/chat/completions")[0] == 1
    assert duration(seen, "/v1/chat/completions")[1] == pytest.approx(3.5)


async def test_a_body_without_more_body_is_the_last_one(clock: Clock) -> None:
    seen = metrics()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        clock.now = 100.25
        await send({"type": "http.response.body", "body": b""})
        clock.now = 150.0

    peer = Peer()
    await RequestMetricsMiddleware(app, seen)(http("/healthz"), peer.receive, peer.send)
    assert counted(seen) == {("/healthz", "204"): 1}
    assert duration(seen, "/healthz")[0] == 1
    assert duration(seen, "/healthz")[1] == pytest.approx(0.25)


async def test_the_label_is_the_matched_route_template_not_the_typed_path(clock: Clock) -> None:
    seen = metrics()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = SimpleNamespace(path="/v1/attestation/{model}")  # as the router sets it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    peer = Peer()
    await RequestMetricsMiddleware(app, seen)(
        http("/v1/attestation/e2ee-secret-name"), peer.receive, peer.send
    )
    assert counted(seen) == {("/v1/attestation/{model}", "200"): 1}


async def test_an_unmatched_or_refused_request_counts_under_its_path_or_other(
    clock: Clock,
) -> None:
    seen = metrics()

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = None  # no route matched
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = RequestMetricsMiddleware(refuse, seen)
    await middleware(http("/v1/chat/completions"), Peer().receive, Peer().send)
    await middleware(http("/v1/e2ee-typed-by-a-client"), Peer().receive, Peer().send)
    assert counted(seen) == {("/v1/chat/completions", "401"): 1, (OTHER, "401"): 1}


async def test_an_app_that_crashes_before_answering_counts_as_500_and_the_crash_goes_on(
    clock: Clock,
) -> None:
    seen = metrics()

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        clock.now = 102.0
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await RequestMetricsMiddleware(crash, seen)(http("/healthz"), Peer().receive, Peer().send)
    assert counted(seen) == {("/healthz", "500"): 1}
    assert duration(seen, "/healthz")[0] == 1
    assert duration(seen, "/healthz")[1] == pytest.approx(2.0)


async def test_a_crash_in_the_middle_of_a_stream_counts_once_with_its_status(
    clock: Clock,
) -> None:
    seen = metrics()

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        clock.now = 104.0
        raise RuntimeError("upstream gone")

    with pytest.raises(RuntimeError):
        await RequestMetricsMiddleware(crash, seen)(
            http("/v1/chat/completions"), Peer().receive, Peer().send
        )
    assert counted(seen) == {("/v1/chat/completions", "200"): 1}
    assert duration(seen, "/v1/chat/completions")[0] == 1
    assert duration(seen, "/v1/chat/completions")[1] == pytest.approx(4.0)


async def test_an_app_that_returns_without_answering_counts_as_500(clock: Clock) -> None:
    seen = metrics()

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return

    await RequestMetricsMiddleware(silent, seen)(http("/healthz"), Peer().receive, Peer().send)
    assert counted(seen) == {("/healthz", "500"): 1}


async def test_lifespan_and_websocket_scopes_pass_through_uncounted(clock: Clock) -> None:
    seen = metrics()
    reached: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append((scope["type"], (await receive())["type"]))  # the client's receive
        await send({"type": "lifespan.startup.complete"})

    peer = Peer()
    middleware = RequestMetricsMiddleware(app, seen)
    await middleware({"type": "lifespan"}, peer.receive, peer.send)
    await middleware({"type": "websocket", "path": "/healthz"}, peer.receive, peer.send)
    assert reached == [("lifespan", "http.request"), ("websocket", "http.request")]
    assert peer.sent == [{"type": "lifespan.startup.complete"}] * 2  # the app's own send
    assert counted(seen) == {}
