"""The command line, run as a user runs it: a real subprocess of `python -m proxy`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from proxy.http.loopback import ThreadedServer, free_socket
from proxy.simulator import SIMULATED_MEASUREMENTS, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, SIM_API_KEY
from tests.support.fixtures import FIXTURES_DIR

REPO = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VENICE_")}
    env.update(extra)
    return env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def sim_env(sim_server: ThreadedServer, sim_state: SimulatorState) -> dict[str, str]:
    return _env(
        VENICE_API_KEY=SIM_API_KEY,
        VENICE_PROXY_UPSTREAM__BASE_URL=sim_server.url + "/api/v1",
        VENICE_PROXY_ATTESTATION__DCAP="off",
        VENICE_PROXY_ATTESTATION__NVIDIA="nonce",
        VENICE_PROXY_ATTESTATION__EXTRA_MRSEAM=json.dumps([SIMULATED_MEASUREMENTS["mrseam"]]),
        VENICE_PROXY_ATTESTATION__EXTRA_MRTD=json.dumps([SIMULATED_MEASUREMENTS["mrtd"]]),
        VENICE_PROXY_LOGGING__LEVEL="warning",
    )


def test_models_command(sim_env: dict[str, str]) -> None:
    result = _run("models", "--json", env=sim_env)
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows[E2EE_MODEL]["e2ee"] is True
    assert rows["simulated-plain"]["e2ee"] is False


def test_verify_command_passes_on_a_good_enclave(sim_env: dict[str, str]) -> None:
    result = _run("verify", E2EE_MODEL, "--json", env=sim_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    checks = {check["code"]: check for check in report["checks"]}
    assert checks["report_data_nonce"]["ok"] is True
    text = _run("verify", E2EE_MODEL, env=sim_env)
    assert text.returncode == 0
    assert "PASS" in text.stdout


def test_verify_command_fails_on_a_debug_enclave(
    sim_env: dict[str, str], sim_state: SimulatorState
) -> None:
    from proxy.simulator import Faults

    sim_state.faults = Faults(debug_quote=True)
    result = _run("verify", E2EE_MODEL, env=sim_env)
    assert result.returncode == 1
    assert "quote_debug_disabled" in result.stdout


def test_bad_setting_is_one_clear_line(sim_env: dict[str, str]) -> None:
    result = _run("serve", env={**sim_env, "VENICE_PROXY_ATTESTATION__DCAP": "sometimes"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "attestation.dcap" in lines[0]
    assert "Traceback" not in result.stderr


def _serve_until_answering(
    *args: str, env: dict[str, str], probe: str = "/healthz"
) -> tuple[subprocess.Popen[str], str]:
    """``python -m proxy ARGS --port P`` and its base URL, once ``probe`` answers with anything
    but a 5xx."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + probe, timeout=1).status_code < 500:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    _, stderr = process.communicate(timeout=15)
    raise AssertionError(f"{args} never answered: {stderr[-2000:]}")


@pytest.fixture
def demo_proxy() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process, url = _serve_until_answering("serve", env=_env())
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_demo_mode_without_a_key(demo_proxy: tuple[str, subprocess.Popen[str]]) -> None:
    url, process = demo_proxy
    models = httpx.get(url + "/v1/models").json()
    assert "DEMO MODE" in models["notice"]
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": E2EE_MODEL, "messages": [{"role": "user", "content": CANARY}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith(f"You said: {CANARY}")
    process.terminate()
    _, stderr = process.communicate(timeout=15)
    assert "DEMO MODE" in stderr
    assert CANARY not in stderr


def test_serve_logs_are_json_lines_once_and_an_aborted_stream_is_logged_as_such(
    demo_proxy: tuple[str, subprocess.Popen[str]],
) -> None:
    """stderr is not a TTY here: every line is JSON (uvicorn's too), start-up and shutdown
    lines come once (the demo's simulator is a second uvicorn server in the same process), and
    a Python client that stops reading after two chunks gives no "socket.send() raised
    exception." line and a request line with ``completed: false``."""
    url, process = demo_proxy
    client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
    stream = client.chat.completions.create(
        model=E2EE_MODEL,
        # about 10,000 chunks: far more than can be written before the client hangs up
        messages=[{"role": "user", "content": f"{CANARY} " + "tell me a long story " * 2000}],
        stream=True,
    )
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    client.close()
    long_model = "m" * 200
    refused = httpx.post(
        url + "/v1/chat/completions",
        json={"model": long_model, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 404
    process.terminate()
    _, stderr = process.communicate(timeout=15)
    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert all(isinstance(record, dict) for record in records), lines
    assert not [line for line in lines if "socket.send" in line]
    events = [record["event"] for record in records]
    for event in events:
        if event.startswith(("Started server process", "Application startup", "Uvicorn running")):
            assert events.count(event) == 1, events
    assert sum(event.startswith("Started server process") for event in events) == 1
    assert all("level" in record and "timestamp" in record for record in records)
    chats = [record for record in records if record["event"] == "chat_request"]
    assert len(chats) == 2, chats
    aborted, long_name = chats
    assert aborted["completed"] is False
    assert aborted["error"] == "client_disconnected"
    assert aborted["completion_tokens"] is None  # the proxy stopped before the usage chunk
    assert 3 <= aborted["chunks"] < 5000  # what was written, not the whole answer
    assert long_name["model"] == "m" * 64 + "..."
    assert CANARY not in stderr


FIXTURES = FIXTURES_DIR / "attestations"
QWEN = "venice_qwen3_5_122b_20260424"
QWEN_NONCE = "ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a"


def _offline(*extra: str) -> subprocess.CompletedProcess[str]:
    return _run(
        "verify",
        "--offline",
        "--attestation",
        str(FIXTURES / f"{QWEN}_attestation.json"),
        "--collateral",
        str(FIXTURES / f"{QWEN}_collateral.json"),
        "--nras-response",
        str(FIXTURES / f"{QWEN}_nras_response.json"),
        "--nras-jwks",
        str(FIXTURES / f"{QWEN}_nras_jwks.json"),
        "--at",
        "1776995921",
        *extra,
        env=_env(),
    )


def test_verify_offline_on_a_real_capture() -> None:
    result = _offline("--nonce", QWEN_NONCE, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    checks = {check["code"]: check for check in report["checks"]}
    for code in ("dcap", "gpu_nras", "event_log_replay", "report_data_nonce"):
        assert checks[code]["ok"] is True
        assert checks[code]["enforced"] is True
    assert set(checks["dcap"]) == {"code", "ok", "enforced", "detail", "tier"}
    text = _offline("--nonce", QWEN_NONCE)
    assert text.returncode == 0
    assert "[quote]" in text.stdout
    assert "attestation PASSED" in text.stdout


def test_verify_offline_fails_with_the_wrong_nonce() -> None:
    result = _offline("--nonce", "00" * 32, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert {"nonce_echo", "report_data_nonce"} <= set(report["failures"])


def test_verify_offline_fails_past_collateral_expiry() -> None:
    result = _run(
        "verify",
        "--offline",
        "--json",
        "--attestation",
        str(FIXTURES / f"{QWEN}_attestation.json"),
        "--nonce",
        QWEN_NONCE,
        "--collateral",
        str(FIXTURES / f"{QWEN}_collateral.json"),
        "--at",
        str(1776995921 + 400 * 86400),
        env={**_env(), "VENICE_PROXY_ATTESTATION__NVIDIA": "nonce"},
    )
    assert result.returncode == 1
    assert "dcap" in json.loads(result.stdout)["failures"]


def test_verify_offline_uses_the_capture_nonce_and_time() -> None:
    result = _run(
        "verify",
        "--offline",
        "--json",
        "--attestation",
        str(FIXTURES / "attestation_glm_5_1.json"),
        "--collateral",
        str(FIXTURES / "collateral_glm_5_1.json"),
        env={**_env(), "VENICE_PROXY_ATTESTATION__NVIDIA": "nonce"},
    )
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["tcb_status"] == "UpToDate"


def test_verify_offline_bad_input_is_exit_2(tmp_path: Path) -> None:
    missing = _run("verify", "--offline", "--attestation", str(tmp_path / "x.json"), env=_env())
    assert missing.returncode == 2
    assert "cannot read" in missing.stdout
    raw = _run(
        "verify",
        "--offline",
        "--attestation",
        str(FIXTURES / f"{QWEN}_attestation.json"),
        env=_env(),
    )
    assert raw.returncode == 2
    assert "--nonce is required" in raw.stdout


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("demo", id="demo"),
        pytest.param("keyed", id="one-process"),
        pytest.param("workers", id="two-workers"),
    ],
)
def test_serve_stopped_by_a_signal_drains_and_exits_0_without_a_traceback(
    sim_env: dict[str, str], mode: str, signum: signal.Signals
) -> None:
    """uvicorn raises the signal it stopped on again once drained; ``serve`` ends with 0 anyway
    (not 143 / -15 or a KeyboardInterrupt traceback), with one worker as with several."""
    env = _env() if mode == "demo" else dict(sim_env)
    env["VENICE_PROXY_LOGGING__LEVEL"] = "info"
    if mode == "workers":
        env["VENICE_PROXY_SERVER__WORKERS"] = "2"
    process, _ = _serve_until_answering("serve", env=env)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert "Finished server process" in stderr


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_simulate_stopped_by_a_signal_exits_0(signum: signal.Signals) -> None:
    process, _ = _serve_until_answering("simulate", env=_env(), probe="/api/v1/models")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
