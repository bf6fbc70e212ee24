"""The rest of the OpenAI surface over a real socket: X-Request-ID on every answer, model
lookup, HEAD probes, and the helpful envelope for every path the proxy does not serve."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from proxy.http.loopback import ThreadedServer
from tests.conftest import CANARY, E2EE_MODEL, PLAIN_MODEL, ProxyFactory

_GENERATED = re.compile(r"req_[0-9a-f]{24}")


def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/models/" + E2EE_MODEL),
        ("POST", "/v1/embeddings"),
        ("GET", "/nothing/here"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("OPTIONS", "/v1/models"),
    ],
)
def test_every_answer_carries_a_request_id(proxy: ThreadedServer, method: str, path: str) -> None:
    generated = httpx.request(method, proxy.url + path)
    assert _GENERATED.fullmatch(generated.headers["x-request-id"])
    assert len(generated.headers.get_list("x-request-id")) == 1
    echoed = httpx.request(method, proxy.url + path, headers={"x-request-id": "my-trace.42"})
    assert echoed.headers["x-request-id"] == "my-trace.42"
    bad = httpx.request(method, proxy.url + path, headers={"x-request-id": "no spaces allowed"})
    assert _GENERATED.fullmatch(bad.headers["x-request-id"])


def test_guard_refusals_carry_a_request_id(make_proxy: ProxyFactory) -> None:
    server = make_proxy(server={"api_keys": ["k-1"]})
    refused = httpx.get(server.url + "/v1/models", headers={"x-request-id": "abc"})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "abc"
    rebinding = httpx.get(server.url + "/v1/models", headers={"host": "evil.example"})
    assert rebinding.status_code == 421
    assert _GENERATED.fullmatch(rebinding.headers["x-request-id"])


def test_models_retrieve_by_id_and_alias(make_proxy: ProxyFactory) -> None:
    server = make_proxy(models={"aliases": {"gpt-4o": E2EE_MODEL, "org/private": E2EE_MODEL}})
    model = client(server).models.retrieve(E2EE_MODEL)
    assert model.id == E2EE_MODEL
    assert model.object == "model"
    alias = client(server).models.retrieve("gpt-4o")
    assert alias.id == "gpt-4o"
    assert (alias.model_extra or {})["venice_model"] == E2EE_MODEL
    assert client(server).models.retrieve("org/private").id == "org/private"
    with pytest.raises(openai.NotFoundError) as info:
        client(server).models.retrieve(PLAIN_MODEL)  # not E2EE: not served without passthrough
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("no-such-model")


def test_head_probes(proxy: ThreadedServer) -> None:
    for path in ("/healthz", "/readyz"):
        answer = httpx.head(proxy.url + path)
        assert answer.status_code == 200
        assert answer.content == b""


def test_embeddings_say_why_they_are_not_served(proxy: ThreadedServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy).embeddings.create(model=E2EE_MODEL, input=CANARY)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_endpoint"
    assert "covers chat only" in error["message"]
    assert "POST /v1/chat/completions" in error["message"]
    assert "passthrough" not in error["message"]
    assert info.value.response.headers["x-request-id"]


def test_passthrough_is_explained_when_it_is_on(make_proxy: ProxyFactory) -> None:
    server = make_proxy(privacy={"non_e2ee": "passthrough", "passthrough_models": [PLAIN_MODEL]})
    answer = httpx.post(server.url + "/v1/audio/speech", json={})
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert 'privacy.non_e2ee = "passthrough"' in message
    assert "does not apply to audio" in message


@pytest.mark.parametrize(
    ("method", "path", "code", "phrase"),
    [
        ("POST", "/v1/completions", "unsupported_endpoint", "covers chat only"),
        ("POST", "/v1/images/generations", "unsupported_endpoint", "covers chat only"),
        ("POST", "/v1/files", "unsupported_endpoint", "keeps no state"),
        ("GET", "/v1/responses/resp_123", "unsupported_endpoint", "keeps no state"),
        ("POST", "/v1/threads", "unsupported_endpoint", "keeps no state"),
        ("GET", "/v1/fine_tuning/jobs", "unsupported_endpoint", "not available"),
        ("POST", "/v1/frobnicate", "unknown_endpoint", "Invalid URL (POST /v1/frobnicate)"),
    ],
)
def test_unknown_paths_get_the_helpful_envelope(
    proxy: ThreadedServer, method: str, path: str, code: str, phrase: str
) -> None:
    answer = httpx.request(method, proxy.url + path)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert phrase in error["message"]
    assert answer.headers["x-request-id"]


def test_wrong_method_names_what_is_served(proxy: ThreadedServer) -> None:
    answer = httpx.get(proxy.url + "/v1/chat/completions")
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert "POST /v1/chat/completions" in answer.json()["error"]["message"]
    assert "POST" in answer.headers["allow"]
