"""Our errors as HTTP answers: every error a client sees is an OpenAI envelope.

``{"error": {"message", "type", "param", "code"}}`` with the error's HTTP status, including
unknown routes and wrong methods (:func:`proxy.http.endpoints.not_served` says what is served
and why a known OpenAI endpoint is not) and crashes (a crash says nothing about its cause: its
traceback could hold data). A ``Retry-After`` goes with an error that knows when a retry can
succeed: the upstream's, passed on, and the proxy's own attestation rate limit.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.core.errors import ProxyError, error_body
from proxy.http.endpoints import not_served
from proxy.observability.logs import get_logger

log = get_logger("proxy.app")


def proxy_error_response(exc: ProxyError) -> JSONResponse:
    """The JSON response for one of our errors."""
    headers: dict[str, str] = {}
    if exc.retry_after:
        headers["retry-after"] = exc.retry_after
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer our errors, Starlette's HTTP errors and crashes with OpenAI envelopes."""

    @app.exception_handler(ProxyError)
    async def _proxy_error(_: Request, exc: ProxyError) -> JSONResponse:
        return proxy_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            services = getattr(request.app.state, "services", None)
            passthrough = services is not None and (
                services.settings.privacy.non_e2ee == "passthrough"
            )
            status, body = not_served(
                request.method, request.url.path, status=exc.status_code, passthrough=passthrough
            )
            return JSONResponse(body, status_code=status, headers=exc.headers)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(exc).__name__)
        return JSONResponse(
            error_body("internal proxy error", "server_error", code="internal_error"),
            status_code=500,
        )
