"""Real Python clients against the proxy over a real socket: LangChain's ``ChatOpenAI`` (chat and
the Responses API) and the LiteLLM SDK.

Each client's text, usage and finish reason through the proxy (E2EE) must equal what the same
client gets from the simulator's plaintext path (its plaintext model answers exactly like the
E2EE ones; the canary guard allows plaintext only for that model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.http.loopback import ThreadedServer
from tests.conftest import CANARY, E2EE_MODEL, PLAIN_MODEL, SIM_API_KEY

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

langchain_openai = pytest.importorskip("langchain_openai")
litellm = pytest.importorskip("litellm")
litellm.telemetry = False

PROMPT = f"Tell me something {CANARY}"


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


def endpoints(proxy: ThreadedServer, sim: ThreadedServer) -> list[tuple[str, str, str]]:
    """(base URL, model, API key): the proxy with an E2EE model, the simulator in plaintext."""
    return [
        (proxy.url + "/v1", E2EE_MODEL, "local"),
        (sim.url + "/api/v1", PLAIN_MODEL, SIM_API_KEY),
    ]


def chat_openai(base_url: str, model: str, key: str, **options: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model=model, base_url=base_url, api_key=key, max_retries=0, **options
    )


def lc_answer(message: Any) -> Answer:
    usage = message.usage_metadata or {}
    metadata = message.response_metadata
    return Answer(
        message.text if isinstance(message.text, str) else message.text(),
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        metadata.get("finish_reason") or metadata.get("status"),
    )


def test_langchain_invoke_stream_batch(proxy: ThreadedServer, sim_server: ThreadedServer) -> None:
    results = []
    for base_url, model, key in endpoints(proxy, sim_server):
        llm = chat_openai(base_url, model, key, stream_usage=True)
        invoked = lc_answer(llm.invoke(PROMPT))
        streamed_chunks = list(llm.stream(PROMPT))
        total = streamed_chunks[0]
        for part in streamed_chunks[1:]:
            total = total + part
        streamed = lc_answer(total)
        batch = [lc_answer(m) for m in llm.batch([PROMPT, PROMPT + " again"])]
        results.append((invoked, streamed, batch))
    through_proxy, plaintext = results
    assert through_proxy == plaintext
    invoked, streamed, batch = through_proxy
    assert invoked.text.startswith(f"You said: {PROMPT}")
    assert invoked.finish_reason == "stop"
    assert streamed.text == invoked.text
    assert streamed.completion_tokens == invoked.completion_tokens
    assert batch[1].text.startswith(f"You said: {PROMPT} again")


def test_langchain_responses_api(proxy: ThreadedServer, sim_server: ThreadedServer) -> None:
    llm = chat_openai(proxy.url + "/v1", E2EE_MODEL, "local", use_responses_api=True)
    invoked = llm.invoke(PROMPT)
    assert invoked.response_metadata["id"].startswith("resp_")
    chunks = list(llm.stream(PROMPT))
    total = chunks[0]
    for part in chunks[1:]:
        total = total + part
    plaintext = lc_answer(
        chat_openai(sim_server.url + "/api/v1", PLAIN_MODEL, SIM_API_KEY).invoke(PROMPT)
    )
    for message in (invoked, total):
        answer = lc_answer(message)
        assert answer.text == plaintext.text
        assert answer.prompt_tokens == plaintext.prompt_tokens
        assert answer.completion_tokens == plaintext.completion_tokens
    # A second turn sends the first answer back as Responses items (with their ids).
    again = llm.invoke([("user", PROMPT), invoked, ("user", f"and more {CANARY}")])
    assert lc_answer(again).text.startswith(f"You said: and more {CANARY}")


def test_langchain_reasoning_parameter_uses_the_responses_api(proxy: ThreadedServer) -> None:
    llm = chat_openai(
        proxy.url + "/v1", "e2ee-simulated-reasoning", "local", reasoning={"effort": "low"}
    )
    message = llm.invoke(PROMPT)
    assert message.response_metadata["id"].startswith("resp_")
    assert lc_answer(message).text.startswith(f"You said: {PROMPT}")


def litellm_answer(response: Any) -> Answer:
    choice = response.choices[0]
    return Answer(
        choice.message.content,
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
        choice.finish_reason,
    )


def test_litellm_sdk(proxy: ThreadedServer, sim_server: ThreadedServer) -> None:
    results = []
    for base_url, model, key in endpoints(proxy, sim_server):
        options = {
            "model": "openai/" + model,
            "api_base": base_url,
            "api_key": key,
            "messages": [{"role": "user", "content": PROMPT}],
            "num_retries": 0,
        }
        whole = litellm_answer(litellm.completion(**options))
        chunks = list(
            litellm.completion(**options, stream=True, stream_options={"include_usage": True})
        )
        rebuilt = litellm.stream_chunk_builder(chunks, messages=options["messages"])
        results.append((whole, litellm_answer(rebuilt)))
    through_proxy, plaintext = results
    assert through_proxy == plaintext
    assert through_proxy[0].text.startswith(f"You said: {PROMPT}")
    assert through_proxy[0].text == through_proxy[1].text


async def test_litellm_async(proxy: ThreadedServer) -> None:
    response = await litellm.acompletion(
        model="openai/" + E2EE_MODEL,
        api_base=proxy.url + "/v1",
        api_key="local",
        messages=[{"role": "user", "content": PROMPT}],
        num_retries=0,
    )
    assert litellm_answer(response).text.startswith(f"You said: {PROMPT}")
