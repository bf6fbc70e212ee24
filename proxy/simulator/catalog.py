"""The simulator's model catalogue and the Venice ``GET /models`` list shape
(docs/protocol.md#models).

Item shape::

    {"id", "object": "model", "owned_by": "venice.ai", "type": "text", "created",
     "model_spec": {"name", "availableContextTokens", "privacy", "offline", "modelSource",
                    "pricing": {"input": {"usd", "diem"}, "output": {"usd", "diem"}},
                    "capabilities": {15 flags incl. supportsE2EE, supportsTeeAttestation},
                    "constraints", "traits"}}

Three models: two ``e2ee-`` models (TEE attestation and E2EE; one also "reasons") and one
plain private model with neither. ``upstream_name`` plays the role of the Hugging Face id that
NEAR reports as ``model_name`` and signs into the signature text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_CREATED = 1767225600  # 2026-01-01, fixed so the list is reproducible


@dataclass(frozen=True, slots=True)
class SimModel:
    """One model the simulator serves."""

    id: str
    display_name: str
    upstream_name: str
    e2ee: bool
    tee: bool
    reasoning: bool
    context_tokens: int = 32768


MODELS: tuple[SimModel, ...] = (
    SimModel(
        id="e2ee-simulated-near",
        display_name="Simulated NEAR E2EE",
        upstream_name="simulator/Simulated-NEAR-1B",
        e2ee=True,
        tee=True,
        reasoning=False,
    ),
    SimModel(
        id="e2ee-simulated-reasoning",
        display_name="Simulated Reasoning E2EE",
        upstream_name="simulator/Simulated-Reasoning-1B",
        e2ee=True,
        tee=True,
        reasoning=True,
    ),
    SimModel(
        id="simulated-plain",
        display_name="Simulated Plain",
        upstream_name="simulator/Simulated-Plain-1B",
        e2ee=False,
        tee=False,
        reasoning=False,
    ),
)

_BY_ID = {model.id: model for model in MODELS}


def find_model(model_id: str) -> SimModel | None:
    """The catalogue entry for a Venice model id, or None."""
    return _BY_ID.get(model_id)


def model_item(model: SimModel) -> dict[str, Any]:
    """One ``/models`` item in Venice's shape."""
    return {
        "id": model.id,
        "object": "model",
        "owned_by": "venice.ai",
        "type": "text",
        "created": MODEL_CREATED,
        "model_spec": {
            "name": model.display_name,
            "availableContextTokens": model.context_tokens,
            "privacy": "private",
            "offline": False,
            "beta": False,
            "modelSource": "simulator",
            "pricing": {
                "input": {"usd": 0.5, "diem": 0.5},
                "output": {"usd": 2.0, "diem": 2.0},
            },
            "capabilities": {
                "optimizedForCode": False,
                "quantization": "fp16",
                "supportsAudioInput": False,
                "supportsE2EE": model.e2ee,
                "supportsFunctionCalling": not model.e2ee,
                "supportsLogProbs": False,
                "supportsMultipleImages": False,
                "supportsReasoning": model.reasoning,
                "supportsReasoningEffort": False,
                "supportsResponseSchema": False,
                "supportsTeeAttestation": model.tee,
                "supportsVideoInput": False,
                "supportsVision": False,
                "supportsWebSearch": False,
                "supportsXSearch": False,
            },
            "constraints": {"temperature": {"default": 0.7}, "top_p": {"default": 0.9}},
            "traits": [],
        },
    }


def models_list(model_type: str | None) -> dict[str, Any]:
    """The ``GET /models`` body; every simulated model is a text model."""
    wanted = model_type in (None, "", "text", "all")
    return {
        "object": "list",
        "type": model_type or "text",
        "data": [model_item(model) for model in MODELS] if wanted else [],
    }
