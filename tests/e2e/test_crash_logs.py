"""A crash inside the app, on a real server: the client gets the generic 500, and no log line
(the proxy's own, or uvicorn's "Exception in ASGI application" with its traceback) carries the
crashing exception's message, which may quote what the app was given."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from proxy.http.services import Services
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory


def test_a_crash_quoting_the_prompt_reaches_no_log_line(
    make_proxy: ProxyFactory,
    log_lines: Callable[[], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_proxy()
    services: Services = server.app.state.services

    async def crash(payload: Any, **_: Any) -> Any:
        raise ValueError(f"could not read {payload['messages'][0]['content']}")

    monkeypatch.setattr(services.chat, "start", crash)
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": E2EE_MODEL, "messages": [{"role": "user", "content": CANARY}]},
    )
    assert response.status_code == 500
    assert CANARY not in response.text
    deadline = time.monotonic() + 5  # uvicorn logs the crash after the answer went out
    while True:
        entries = [json.loads(line) for line in log_lines() if line.startswith("{")]
        crashes = [e for e in entries if e["event"] == "Exception in ASGI application\n"]
        if crashes or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert CANARY not in json.dumps(entries)
    (crashed,) = crashes
    assert crashed["exception"].endswith("builtins.ValueError (message withheld)\n")
    assert "in crash" in crashed["exception"]  # the frames are kept: a bug can be found
    (ours,) = [e for e in entries if e["event"] == "unhandled_error"]
    assert ours["error_type"] == "ValueError"
