"""Real JavaScript clients against the proxy: openai-node and the Vercel AI SDK, run by Node.

``tests/js/clients.mjs`` (its packages pinned in ``tests/js/package-lock.json`` and installed by
``scripts/ensure_js.sh``, which ``make test`` runs first) talks to a proxy on a real socket and to
the simulator's plaintext path, and prints one JSON object of results; the tests below assert
them. The canary leak check runs over everything the script sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from proxy.http.app import create_app
from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from tests.conftest import (
    _LOG_BUFFER,
    CANARY,
    E2EE_MODEL,
    PLAIN_MODEL,
    SIM_API_KEY,
    assert_no_leak,
    proxy_settings,
)

JS_DIR = Path(__file__).resolve().parents[1] / "js"
ORIGIN = "http://app.local:5173"
PROMPT = f"Hello {CANARY}"
CHAT_SCENARIOS = ("node_chat", "node_chat_stream", "ai_chat_generate", "ai_chat_stream")


def _installed() -> bool:
    return (JS_DIR / "node_modules" / ".installed-from-lock").is_file()


@pytest.fixture(scope="module")
def results(sim_server: ThreadedServer, sim_state: SimulatorState) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not _installed():
        pytest.skip("the JavaScript clients are not installed: run scripts/ensure_js.sh")
    settings = proxy_settings(sim_server.url, server={"cors_origins": [ORIGIN]})
    proxy = ThreadedServer(create_app(settings, api_key=SecretStr(SIM_API_KEY))).start()
    config = {
        "proxyUrl": proxy.url,
        "simUrl": sim_server.url,
        "simKey": SIM_API_KEY,
        "e2eeModel": E2EE_MODEL,
        "plainModel": PLAIN_MODEL,
        "prompt": PROMPT,
        "origin": ORIGIN,
    }
    sim_state.reset()
    log_start = _LOG_BUFFER.tell()
    try:
        run = subprocess.run(
            [node, str(JS_DIR / "clients.mjs"), json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=JS_DIR,
            check=False,
        )
    finally:
        proxy.stop()
    assert run.returncode == 0, run.stderr[-4000:]
    upstream: list[str] = []
    for recorded in sim_state.requests:
        body = recorded.body.decode("utf-8", errors="replace")
        if f'"model":"{PLAIN_MODEL}"' in body.replace(" ", ""):
            continue  # the plaintext path, on purpose
        upstream += [body, str(recorded.query), *recorded.headers.values()]
    assert_no_leak(upstream, _LOG_BUFFER.getvalue()[log_start:])
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.parametrize("scenario", CHAT_SCENARIOS)
def test_chat_matches_the_plaintext_path(results: dict[str, Any], scenario: str) -> None:
    through_proxy = _ok(results[f"{scenario}_proxy"])
    plaintext = _ok(results[f"{scenario}_plain"])
    assert through_proxy == plaintext
    assert through_proxy["text"].startswith(f"You said: {PROMPT}")
    assert through_proxy["finishReason"] == "stop"
    assert through_proxy["usage"]["output"] > 0


def test_openai_node_responses(results: dict[str, Any]) -> None:
    result = _ok(results["node_responses"])
    plaintext = _ok(results["node_chat_plain"])
    assert result["text"] == plaintext["text"]
    assert result["usage"] == plaintext["usage"]
    assert result["finishReason"] == "completed"
    streamed = result["streamed"]
    assert streamed["text"] == plaintext["text"]
    assert streamed["usage"] == plaintext["usage"]
    assert streamed["sequence"] == list(range(len(streamed["types"])))
    assert streamed["types"][0] == "response.created"
    assert streamed["types"][-1] == "response.completed"


@pytest.mark.parametrize("scenario", ["ai_responses_generate", "ai_responses_stream"])
def test_ai_sdk_default_provider_uses_the_responses_api(
    results: dict[str, Any], scenario: str
) -> None:
    result = _ok(results[scenario])
    plaintext = _ok(results["ai_chat_generate_plain"])
    assert result == plaintext  # same text, usage and finish reason as the plaintext chat path


@pytest.mark.parametrize("scenario", ["ai_responses_tools", "ai_chat_tools"])
def test_ai_sdk_generate_text_runs_the_tool_loop(results: dict[str, Any], scenario: str) -> None:
    # Tools are emulated inside the encrypted messages (the leak check covers the canary in the
    # tool's description, schema and result): the call, the tool's result, a final text.
    result = _ok(results[scenario])
    assert result["toolCalls"] == ["weather"]
    assert result["steps"] == 2
    assert "sunny" in result["text"]
    assert result["finishReason"] == "stop"


@pytest.mark.parametrize("scenario", ["ai_responses_object", "ai_chat_object"])
def test_ai_sdk_generate_object(results: dict[str, Any], scenario: str) -> None:
    result = _ok(results[scenario])
    assert set(result["object"]) == {"city", "country"}
    assert all(isinstance(value, str) for value in result["object"].values())
    assert result["finishReason"] == "stop"


@pytest.mark.parametrize("scenario", ["cors_openai_node", "cors_ai_sdk"])
def test_browser_preflight_as_the_sdks_send_it(results: dict[str, Any], scenario: str) -> None:
    result = _ok(results[scenario])
    assert result["status"] == 204
    assert result["allowOrigin"] == ORIGIN
    assert set(result["requested"]) <= set(result["allowed"])
    assert result["requestId"]
    assert result["actualStatus"] == 200
    assert result["actualAllowOrigin"] == ORIGIN
    assert "x-request-id" in result["exposed"]
    if scenario == "cors_openai_node":
        assert any(name.startswith("x-stainless-") for name in result["requested"])


def test_node_version(results: dict[str, Any]) -> None:
    assert int(results["node"].lstrip("v").split(".")[0]) >= 20
