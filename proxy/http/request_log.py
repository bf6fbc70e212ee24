"""The one log line and the metrics of each chat request (never any content).

:class:`RequestRecord` collects the facts of one exchange as it goes (model, stream flag,
attempts, time to first byte, chunks, tokens, cost, attestation age, Venice's ray id, rate-limit
headroom, our error code) and emits them once in :meth:`RequestRecord.finish`. Upstream-chosen
error codes are never logged: only our own (:attr:`ProxyError.log_code`). The client-chosen model
name is cut to :data:`~proxy.observability.logs.MAX_LOGGED_NAME` characters.

``chunks`` and ``completed``: for a stream, the chunks handed to the client and whether
``[DONE]`` reached it after a complete answer (an aborted stream is ``completed: false`` with
the chunks it got); for a single JSON answer, the chunks it was built from and whether it was
answered with 200.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from proxy.core.errors import ProxyError
from proxy.http.body import client_request_id, fresh_request_id, request_id
from proxy.http.errors import proxy_error_response
from proxy.http.services import Services
from proxy.observability.logs import clip, get_logger
from proxy.observability.metrics import DecryptionKind
from proxy.service.chat import OpenedAnswer
from proxy.venice.headers import UpstreamHeaders

log = get_logger("proxy.request")


@dataclass(slots=True)
class RequestRecord:
    """One chat request's facts for its log line and metrics (never any content)."""

    services: Services
    request_id: str  # the proxy's own: logged and sent upstream
    started: float
    client_request_id: str | None = None  # the client's: logged and echoed, never sent upstream
    model: str | None = None
    stream: bool = False
    outcome: OpenedAnswer | None = None
    upstream: UpstreamHeaders | None = None
    ttfb_s: float | None = None

    @classmethod
    def begin(cls, services: Services, request: Request) -> RequestRecord:
        """The record of a request that starts now.

        Its own id (sent upstream, logged as ``request_id``) is the one the request-id
        middleware chose when the client sent none (so the echoed id is the upstream one); when
        the client sent its own, that one is echoed and logged as ``client_request_id`` and
        Venice gets a fresh id of the proxy's, so nothing the client chose leaves the machine.
        """
        client_id = client_request_id(request)
        own = fresh_request_id() if client_id is not None else request_id(request)
        return cls(services, own, time.perf_counter(), client_request_id=client_id)

    def attach(self, outcome: OpenedAnswer) -> None:
        """Remember the opened upstream stream and read its account headers."""
        self.outcome = outcome
        self.model = outcome.model
        self.upstream = self.services.metrics.record_upstream_headers(outcome.upstream.headers)
        if self.upstream.deprecation_warning:
            log.warning(
                "model_deprecation",
                model=outcome.model,
                warning=self.upstream.deprecation_warning,
                date=self.upstream.deprecation_date,
            )

    def first_byte(self) -> None:
        """The first byte of the answer is leaving for the client."""
        if self.ttfb_s is None:
            self.ttfb_s = time.perf_counter() - self.started
            self.services.metrics.observe_ttfb(self.model, self.ttfb_s)

    def fail(self, exc: ProxyError, headers: Mapping[str, str]) -> Response:
        """Log the request as failed with ``exc`` and answer with its OpenAI error."""
        self.finish(exc.http_status, exc.log_code)
        response = proxy_error_response(exc)
        response.headers.update(headers)
        return response

    def finish(self, status: int, error_code: str | None = None) -> None:
        """Emit the request's one log line and its metrics."""
        outcome = self.outcome
        stats = outcome.stats if outcome else None
        code = error_code or (stats.error_code if stats else None)
        if code in _DECRYPTION_CODES:
            self.services.metrics.record_decryption_failure(_DECRYPTION_CODES[code])
        chunks, completed = 0, False
        if outcome is not None and stats is not None:
            if outcome.client_stream:
                chunks, completed = stats.sent, stats.delivered
            else:
                chunks = stats.chunks
                completed = stats.completed and status == 200 and code is None
            self.services.metrics.record_chunks(chunks)
        usage = stats.usage if stats else None
        key = outcome.key if outcome else None
        upstream = self.upstream
        log.info(
            "chat_request",
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            model=clip(self.model),
            stream=self.stream,
            e2ee=outcome.e2ee if outcome else None,
            status=status,
            upstream_status=outcome.upstream.status_code if outcome else None,
            attempts=outcome.attempts if outcome else 0,
            chunks=chunks,
            completed=completed,
            stopped=stats.stopped if stats else False,
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            completion_tokens=usage.get("completion_tokens") if usage else None,
            cost_usd=_cost_usd(stats.cost) if stats else None,
            signing_address=key.signing_address if key else None,
            trust_level=key.report.trust_level if key else None,
            attestation_age_s=round(key.age_s(time.time()), 1) if key else None,
            venice_request_id=upstream.cf_ray if upstream else None,
            ratelimit_remaining_requests=upstream.ratelimit_remaining_requests
            if upstream
            else None,
            error=code,
            ttfb_ms=round(self.ttfb_s * 1000, 2) if self.ttfb_s is not None else None,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 2),
        )


def _cost_usd(cost: Any) -> float | None:
    """Venice's reported cost in USD, when it sent a number (its ``cost`` object)."""
    value = cost.get("usd") if isinstance(cost, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_DECRYPTION_CODES: dict[str, DecryptionKind] = {
    "e2ee_decryption_failed": "decrypt",
    "e2ee_plaintext_in_stream": "plaintext",
}
