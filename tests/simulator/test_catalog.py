"""The simulator's model catalogue and Venice's ``GET /models`` shape (docs/protocol.md#models):
the three models, one item exactly, what each capability says, and which types list them."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.simulator.catalog import (
    MODEL_CREATED,
    MODELS,
    SimModel,
    find_model,
    model_item,
    models_list,
)

NEAR_ITEM: dict[str, Any] = {
    "id": "e2ee-simulated-near",
    "object": "model",
    "owned_by": "venice.ai",
    "type": "text",
    "created": 1767225600,
    "model_spec": {
        "name": "Simulated NEAR E2EE",
        "availableContextTokens": 32768,
        "privacy": "private",
        "offline": False,
        "beta": False,
        "modelSource": "simulator",
        "pricing": {"input": {"usd": 0.5, "diem": 0.5}, "output": {"usd": 2.0, "diem": 2.0}},
        "capabilities": {
            "optimizedForCode": False,
            "quantization": "fp16",
            "supportsAudioInput": False,
            "supportsE2EE": True,
            "supportsFunctionCalling": False,
            "supportsLogProbs": False,
            "supportsMultipleImages": False,
            "supportsReasoning": False,
            "supportsReasoningEffort": False,
            "supportsResponseSchema": False,
            "supportsTeeAttestation": True,
            "supportsVideoInput": False,
            "supportsVision": False,
            "supportsWebSearch": False,
            "supportsXSearch": False,
        },
        "constraints": {"temperature": {"default": 0.7}, "top_p": {"default": 0.9}},
        "traits": [],
    },
}


def test_the_three_models() -> None:
    assert [
        (m.id, m.display_name, m.upstream_name, m.e2ee, m.tee, m.reasoning, m.context_tokens)
        for m in MODELS
    ] == [
        (
            "e2ee-simulated-near",
            "Simulated NEAR E2EE",
            "simulator/Simulated-NEAR-1B",
            True,
            True,
            False,
            32768,
        ),
        (
            "e2ee-simulated-reasoning",
            "Simulated Reasoning E2EE",
            "simulator/Simulated-Reasoning-1B",
            True,
            True,
            True,
            32768,
        ),
        (
            "simulated-plain",
            "Simulated Plain",
            "simulator/Simulated-Plain-1B",
            False,
            False,
            False,
            32768,
        ),
    ]


def test_find_model_by_exact_id() -> None:
    for model in MODELS:
        assert find_model(model.id) is model
    assert find_model("E2EE-simulated-near") is None
    assert find_model("e2ee-simulated") is None
    assert find_model("") is None


def test_one_item_in_venices_shape() -> None:
    assert MODEL_CREATED == 1767225600  # 2026-01-01T00:00:00Z, so the list is reproducible
    assert model_item(MODELS[0]) == NEAR_ITEM


def test_each_item_follows_its_model() -> None:
    for model in MODELS:
        item = model_item(model)
        spec = item["model_spec"]
        capabilities = spec["capabilities"]
        assert item["id"] == model.id
        assert spec["name"] == model.display_name
        assert spec["availableContextTokens"] == model.context_tokens
        assert capabilities["supportsE2EE"] is model.e2ee
        assert capabilities["supportsTeeAttestation"] is model.tee
        assert capabilities["supportsReasoning"] is model.reasoning
        # E2EE models cannot call tools natively (the proxy emulates them); the plain one can.
        assert capabilities["supportsFunctionCalling"] is (not model.e2ee)
        # docs/protocol.md#models: supportsE2EE implies supportsTeeAttestation.
        assert capabilities["supportsTeeAttestation"] or not capabilities["supportsE2EE"]
        # E2EE ids start with e2ee-.
        assert model.id.startswith("e2ee-") is model.e2ee


def test_a_model_of_another_context_size() -> None:
    model = SimModel("m", "M", "org/M", e2ee=False, tee=True, reasoning=True, context_tokens=8)
    item = model_item(model)
    assert item["model_spec"]["availableContextTokens"] == 8
    assert item["model_spec"]["capabilities"]["supportsTeeAttestation"] is True
    assert item["model_spec"]["capabilities"]["supportsE2EE"] is False
    assert item["model_spec"]["capabilities"]["supportsFunctionCalling"] is True


@pytest.mark.parametrize("model_type", [None, "", "text", "all"])
def test_text_and_all_list_every_model(model_type: str | None) -> None:
    body = models_list(model_type)
    assert body == {
        "object": "list",
        "type": model_type or "text",
        "data": [model_item(model) for model in MODELS],
    }
    assert body["data"][0] == NEAR_ITEM


@pytest.mark.parametrize("model_type", ["image", "embedding", "TEXT", "tts"])
def test_other_types_list_nothing(model_type: str) -> None:
    assert models_list(model_type) == {"object": "list", "type": model_type, "data": []}
