"""Pure rules of the browser-origin guard and the unknown-path envelope."""

from __future__ import annotations

import pytest

from proxy.http.cors import BrowserOriginMiddleware, normalize_origin, reflected_headers
from proxy.http.endpoints import not_served


async def _app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
    raise AssertionError("not called")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("HTTP://App.Local:80/", "http://app.local"),
        ("https://x.example:443", "https://x.example"),
        ("https://x.example:8443", "https://x.example:8443"),
        ("null", "null"),
    ],
)
def test_normalize_origin(given: str, expected: str) -> None:
    assert normalize_origin(given) == expected


def test_reflected_headers_keep_tokens_once() -> None:
    assert (
        reflected_headers(["X-Stainless-OS, content-type", "content-type,bad header, openai-beta"])
        == "x-stainless-os, content-type, openai-beta"
    )


def test_origin_rules() -> None:
    guard = BrowserOriginMiddleware(_app, ["http://localhost:5173"])
    scope = {"type": "http", "scheme": "http", "headers": [(b"host", b"127.0.0.1:8000")]}
    assert guard.allows("http://localhost:5173", scope)
    assert guard.allows("http://127.0.0.1:8000", scope)  # the proxy's own pages
    assert not guard.allows("http://127.0.0.1:8001", scope)
    assert not guard.allows("https://127.0.0.1:8000", scope)
    assert not guard.allows("http://localhost:5174", scope)
    assert not BrowserOriginMiddleware(_app, []).allows("http://localhost:5173", scope)
    assert BrowserOriginMiddleware(_app, ["*"]).allows("https://anything.example", scope)


def test_not_served_messages() -> None:
    status, body = not_served("POST", "/v1/embeddings", status=404, passthrough=False)
    assert status == 404
    assert body["error"]["code"] == "unsupported_endpoint"
    assert "covers chat only" in body["error"]["message"]
    _, passthrough = not_served("POST", "/v1/embeddings", status=404, passthrough=True)
    assert "does not apply to embeddings" in passthrough["error"]["message"]
    _, stored = not_served("GET", "/v1/responses/resp_1", status=404, passthrough=False)
    assert "keeps no state" in stored["error"]["message"]
    _, unknown = not_served("GET", "/v2/x\x00y", status=404, passthrough=False)
    assert unknown["error"]["code"] == "unknown_endpoint"
    assert "\x00" not in unknown["error"]["message"]
    status, wrong = not_served("GET", "/v1/responses", status=405, passthrough=False)
    assert status == 405
    assert wrong["error"]["code"] == "method_not_allowed"
