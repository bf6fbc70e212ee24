"""The app's error handlers on a small FastAPI app: our errors, Starlette's HTTP errors (404 and
405 as the endpoints' envelopes, with or without passthrough) and crashes, each an OpenAI
envelope; a crash says nothing of its cause, to the client or in the log."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace

import httpx
from fastapi import FastAPI, HTTPException

from proxy.core.errors import UpstreamStatusError
from proxy.http.endpoints import not_served
from proxy.http.errors import install_error_handlers
from proxy.settings import Settings

CANARY = "c4n4ry-secret-prompt-text"


def app(*, passthrough: bool | None = None) -> FastAPI:
    """With ``passthrough`` None the app has no services on its state (a bare app)."""
    application = FastAPI()
    install_error_handlers(application)
    if passthrough is not None:
        privacy = {"non_e2ee": "passthrough", "passthrough_models": ["m"]} if passthrough else {}
        application.state.services = SimpleNamespace(
            settings=Settings.model_validate({"privacy": privacy})
        )

    @application.get("/limited")
    async def limited() -> None:
        raise UpstreamStatusError(429, "slow down", retry_after="7")

    @application.get("/forbidden")
    async def forbidden() -> None:
        raise HTTPException(403, detail="not yours", headers={"x-why": "policy"})

    @application.get("/gone")
    async def gone() -> None:
        raise HTTPException(404, detail=CANARY)

    @application.get("/crash")
    async def crash() -> None:
        raise ValueError(CANARY)

    return application


async def call(application: FastAPI, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.request(method, path)


async def test_our_error_is_its_envelope_with_its_status_and_retry_after() -> None:
    answer = await call(app(), "GET", "/limited")
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.json() == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "upstream_error",
        }
    }


async def test_unknown_routes_and_wrong_methods_say_what_is_served() -> None:
    for passthrough in (None, False, True):
        application = app(passthrough=passthrough)
        for method, path, status in (
            ("POST", "/v1/embeddings", 404),
            ("GET", "/v2/nothing", 404),
            ("DELETE", "/limited", 405),
        ):
            answer = await call(application, method, path)
            expected = not_served(method, path, status=status, passthrough=bool(passthrough))
            assert (answer.status_code, answer.json()) == expected, (passthrough, method, path)
        wrong = await call(application, "DELETE", "/limited")
        assert wrong.headers["allow"] == "GET"  # the 405's own header is kept


async def test_a_404_raised_by_a_handler_is_the_same_envelope_and_never_echoes_its_detail() -> None:
    answer = await call(app(passthrough=False), "GET", "/gone")
    assert (answer.status_code, answer.json()) == not_served(
        "GET", "/gone", status=404, passthrough=False
    )
    assert CANARY not in answer.text


async def test_other_http_errors_keep_their_status_detail_and_headers() -> None:
    answer = await call(app(), "GET", "/forbidden")
    assert answer.status_code == 403
    assert answer.headers["x-why"] == "policy"
    assert answer.json()["error"]["message"] == "not yours"
    assert answer.json()["error"]["type"] == "invalid_request_error"


async def test_a_crash_is_a_500_envelope_that_says_nothing_of_its_cause(
    log_lines: Callable[[], list[str]],
) -> None:
    answer = await call(app(), "GET", "/crash")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {
            "message": "internal proxy error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert CANARY not in answer.text
    logged = [json.loads(line) for line in log_lines()]
    crashes = [record for record in logged if record.get("event") == "unhandled_error"]
    assert [record["error_type"] for record in crashes] == ["ValueError"]
    assert all(CANARY not in line for line in log_lines())
