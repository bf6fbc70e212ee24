"""Client-side helpers for the simulator tests: real crypto on the client side too."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from proxy.core.crypto import KeyPair, generate_keypair, open_text, seal_text
from proxy.simulator import SimulatorState, create_simulator_app

BASE_URL = "http://simulator.test/api/v1"
API_KEY = "sk-sim-test"
NEAR_MODEL = "e2ee-simulated-near"
REASONING_MODEL = "e2ee-simulated-reasoning"
PLAIN_MODEL = "simulated-plain"
NONCE = bytes(range(32))
USER_TEXT = "héllo wörld"


def client_for(state: SimulatorState, *, api_key: str | None = API_KEY) -> httpx.AsyncClient:
    """An in-process client for a simulator app (buffers whole bodies)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_simulator_app(state)),
        base_url=BASE_URL,
        headers=headers,
    )


def e2ee_headers(client: KeyPair, model_key: bytes, algo: str = "ecdsa") -> dict[str, str]:
    return {
        "X-Venice-TEE-Client-Pub-Key": client.public_hex,
        "X-Venice-TEE-Model-Pub-Key": model_key.hex(),
        "X-Venice-TEE-Signing-Algo": algo,
    }


def encrypt_messages(messages: list[dict[str, Any]], model_key: bytes) -> list[dict[str, Any]]:
    """The client rule: every string content (including "") sealed, lists as JSON."""
    sealed: list[dict[str, Any]] = []
    for message in messages:
        copy = dict(message)
        content = copy.get("content")
        if isinstance(content, list):
            copy["content"] = seal_text(model_key, json.dumps(content))
        elif isinstance(content, str):
            copy["content"] = seal_text(model_key, content)
        sealed.append(copy)
    return sealed


def sse_events(body: bytes) -> list[str]:
    """The data of every event of a (complete) SSE body."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), "every event ends with a blank line"
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block[:40]
        events.append(block[len("data: ") :])
    return events


def json_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in sse_events(body) if data != "[DONE]"]


def decrypt_field(value: str, client: KeyPair) -> str:
    return open_text(client.private, value)


def collect(
    chunks: list[dict[str, Any]], client: KeyPair | None, field: str = "content"
) -> dict[int, str]:
    """Per choice, the concatenated (decrypted) ``field`` of every delta."""
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            value = choice["delta"].get(field)
            if isinstance(value, str) and value:
                text = decrypt_field(value, client) if client is not None else value
                out[choice["index"]] = out.get(choice["index"], "") + text
    return out


async def e2ee_chat(
    http: httpx.AsyncClient,
    state: SimulatorState,
    messages: list[dict[str, Any]],
    *,
    model: str = NEAR_MODEL,
    client: KeyPair | None = None,
    model_key: bytes | None = None,
    **extra: Any,
) -> tuple[httpx.Response, KeyPair]:
    """POST an encrypted streaming chat request; returns the response and the client keys."""
    client = client or generate_keypair()
    key = model_key if model_key is not None else state.enclave_public_key
    body = {"model": model, "messages": encrypt_messages(messages, key), "stream": True} | extra
    response = await http.post("/chat/completions", json=body, headers=e2ee_headers(client, key))
    return response, client


class ThreadedSimulator:
    """The simulator app under a real uvicorn server on 127.0.0.1, in a daemon thread."""

    def __init__(self, state: SimulatorState) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/api/v1"
        config = uvicorn.Config(
            create_simulator_app(state), log_level="critical", lifespan="off", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ThreadedSimulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("simulator did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
