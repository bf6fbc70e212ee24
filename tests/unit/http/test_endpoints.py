"""The 404/405 envelopes: what a client is told when it asks for something the proxy does not
serve, byte for byte (the OpenAI SDKs show ``error.message`` to the user as it is)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.http.endpoints import SERVED, not_served, served_list

SERVES = (
    "POST /v1/chat/completions, POST /v1/responses, GET /v1/models, GET /v1/models/{model}, "
    "GET /v1/attestation/{model}, GET /healthz, GET /readyz, GET /metrics"
)
CHAT_ONLY = "Venice's end-to-end encryption covers chat only"
STATELESS = (
    "this proxy keeps no state (nothing is stored between requests); send the whole "
    "conversation with each request"
)


def envelope(message: str, code: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        }
    }


def test_the_served_list_names_every_endpoint() -> None:
    assert served_list() == "this proxy serves " + SERVES
    assert ", ".join(SERVED) == SERVES


def test_an_unknown_path_is_an_invalid_url_that_lists_what_is_served() -> None:
    assert not_served("GET", "/v2/foo", status=404, passthrough=False) == (
        404,
        envelope(f"Invalid URL (GET /v2/foo): this proxy serves {SERVES}.", "unknown_endpoint"),
    )


def test_a_wrong_method_is_405_naming_what_is_served() -> None:
    assert not_served("GET", "/v1/chat/completions", status=405, passthrough=False) == (
        405,
        envelope(
            f"Method not allowed (GET /v1/chat/completions): this proxy serves {SERVES}.",
            "method_not_allowed",
        ),
    )


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/v1/embeddings", "embeddings"),
        ("/embeddings", "embeddings"),
        ("/v1/audio/speech", "audio (speech, transcriptions, translations)"),
        ("/v1/images/generations", "images"),
        ("/v1/moderations", "moderations"),
        ("/v1/completions", "legacy completions"),
    ],
)
def test_a_chat_only_family_says_venice_encrypts_chat_only(path: str, what: str) -> None:
    assert not_served("POST", path, status=404, passthrough=False) == (
        404,
        envelope(
            f"Invalid URL (POST {path}): {what} are not available through this proxy: "
            f"{CHAT_ONLY}. This proxy serves {SERVES}.",
            "unsupported_endpoint",
        ),
    )


def test_with_passthrough_the_message_says_passthrough_does_not_forward_it_either() -> None:
    assert not_served("POST", "/v1/embeddings", status=404, passthrough=True) == (
        404,
        envelope(
            "Invalid URL (POST /v1/embeddings): embeddings are not available through this "
            f'proxy: {CHAT_ONLY}; privacy.non_e2ee = "passthrough" forwards chat requests for '
            "models without E2EE in plaintext, and does not apply to embeddings. "
            f"This proxy serves {SERVES}.",
            "unsupported_endpoint",
        ),
    )


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/v1/responses/resp_1", "stored responses"),
        ("/v1/responses/", "stored responses"),
        ("/v1/chat/completions/chatcmpl-1", "stored chat completions"),
        ("/v1/chat/completions/", "stored chat completions"),
        ("/v1/files", "files"),
        ("/v1/vector_stores/vs_1/files", "vector stores"),
        ("/v1/threads/t/runs", "threads"),
    ],
)
def test_a_stateful_family_says_the_proxy_keeps_no_state(path: str, what: str) -> None:
    assert not_served("GET", path, status=404, passthrough=True) == (
        404,
        envelope(
            f"Invalid URL (GET {path}): {what} are not available: {STATELESS}. "
            f"This proxy serves {SERVES}.",
            "unsupported_endpoint",
        ),
    )


def test_another_openai_family_is_named_as_not_part_of_the_proxy() -> None:
    assert not_served("POST", "/v1/fine_tuning/jobs", status=404, passthrough=True) == (
        404,
        envelope(
            "Invalid URL (POST /v1/fine_tuning/jobs): fine-tuning jobs are not available through "
            f"this proxy. This proxy serves {SERVES}.",
            "unsupported_endpoint",
        ),
    )


@pytest.mark.parametrize(
    "path", ["/v1/responses", "/v1/chat/completions", "/v1/Xfiles", "/v1/filesystem", "/v1"]
)
def test_a_served_path_or_a_lookalike_is_not_taken_for_a_family(path: str) -> None:
    status, body = not_served("GET", path, status=404, passthrough=False)
    assert status == 404
    assert body == envelope(
        f"Invalid URL (GET {path}): this proxy serves {SERVES}.", "unknown_endpoint"
    )


def test_the_path_shown_is_printable_and_at_most_200_characters() -> None:
    _, body = not_served("GET", "/v2/a\x00b\nc\u200bd é", status=404, passthrough=False)
    assert body["error"]["message"].startswith("Invalid URL (GET /v2/a?b?c?d é): ")
    long = "/x" + "y" * 300
    _, body = not_served("GET", long, status=404, passthrough=False)
    assert body["error"]["message"].startswith(f"Invalid URL (GET {long[:200]}): this proxy")


def test_the_method_shown_is_at_most_16_characters() -> None:
    _, body = not_served("A" * 20, "/v2/x", status=404, passthrough=False)
    assert body["error"]["message"].startswith(f"Invalid URL ({'A' * 16} /v2/x): ")
    _, body = not_served("B" * 20, "/v1/models", status=405, passthrough=False)
    assert body["error"]["message"].startswith(f"Method not allowed ({'B' * 16} /v1/models): ")
