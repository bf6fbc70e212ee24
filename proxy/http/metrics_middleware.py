"""Request metrics at the outermost layer of the app: every answer counted by route and status.

The route label is the matched route template (``/v1/attestation/{model}``, never the path a
client typed); a request that matched no route, or that a guard refused before routing, is
counted under its path only when that path is a known route, else under ``other``
(:meth:`proxy.observability.metrics.Metrics.route_label`).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.observability.metrics import Metrics


class RequestMetricsMiddleware:
    """Pure ASGI: counts every HTTP answer by route template and status, with its duration
    (until the last body byte, so streams count their whole length). Requests a guard refused
    are counted too, under their path if it is a known route."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route = scope.get("route")
            template = getattr(route, "path", None) or scope.get("path", "")
            self.metrics.observe_request(template, status, time.perf_counter() - started)

        async def send_and_measure(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, send_and_measure)
        finally:
            record()
