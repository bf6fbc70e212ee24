"""What the proxy serves, and the helpful answer for every path it does not. Pure text rules.

:func:`not_served` turns a request that matched no route (404) or used the wrong method on a
route (405) into ``(status, OpenAI error envelope)``:

- known OpenAI endpoints the proxy does not serve get a reason: embeddings, audio, images,
  moderations and legacy completions because Venice's end-to-end encryption covers chat only
  (with ``privacy.non_e2ee = "passthrough"`` the message says that passthrough is for chat
  models without E2EE and does not forward these either); files, assistants, threads, vector
  stores, batches, uploads, conversations, stored responses and stored chat completions because
  the proxy keeps no state; realtime, fine-tuning and the rest because they are not part of it;
- any other path: OpenAI's ``Invalid URL (METHOD /path)`` followed by the list of endpoints;
- a known path with the wrong method: 405 naming the method to use.

Every answer is 404 (or 405) with ``type: invalid_request_error`` and a stable ``code``
(``unsupported_endpoint``, ``unknown_endpoint``, ``method_not_allowed``); the OpenAI SDKs raise
them as ``NotFoundError`` and never retry them.
"""

from __future__ import annotations

from typing import Any

from proxy.core.errors import error_body

SERVED: tuple[str, ...] = (
    "POST /v1/chat/completions",
    "POST /v1/responses",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "GET /v1/attestation/{model}",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
)

_CHAT_ONLY = "Venice's end-to-end encryption covers chat only"
_STATELESS = (
    "this proxy keeps no state (nothing is stored between requests); send the whole "
    "conversation with each request"
)
# (path prefix without /v1, what it is, why it is not served: "chat" or "state" or "other")
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("embeddings", "embeddings", "chat"),
    ("audio", "audio (speech, transcriptions, translations)", "chat"),
    ("images", "images", "chat"),
    ("videos", "videos", "chat"),
    ("moderations", "moderations", "chat"),
    ("completions", "legacy completions", "chat"),
    ("responses/", "stored responses", "state"),
    ("chat/completions/", "stored chat completions", "state"),
    ("conversations", "conversations", "state"),
    ("files", "files", "state"),
    ("uploads", "uploads", "state"),
    ("vector_stores", "vector stores", "state"),
    ("assistants", "assistants", "state"),
    ("threads", "threads", "state"),
    ("batches", "batches", "state"),
    ("containers", "containers", "state"),
    ("fine_tuning", "fine-tuning jobs", "other"),
    ("evals", "evals", "other"),
    ("realtime", "realtime sessions", "other"),
)


def served_list() -> str:
    """The endpoints the proxy serves, as one sentence."""
    return "this proxy serves " + ", ".join(SERVED)


def _family(path: str) -> tuple[str, str] | None:
    rest = path.removeprefix("/v1").lstrip("/")
    for prefix, what, why in _FAMILIES:
        if rest == prefix.rstrip("/") and prefix.endswith("/"):
            continue  # "responses" itself is served; only its sub-paths are stored state
        if rest == prefix or rest.startswith(prefix.rstrip("/") + "/"):
            return what, why
    return None


def _shown(path: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in path[:200])


def not_served(
    method: str, path: str, *, status: int, passthrough: bool
) -> tuple[int, dict[str, Any]]:
    """The status and envelope for a request no route answered (``status`` 404 or 405)."""
    shown = f"{method[:16]} {_shown(path)}"
    if status == 405:
        return 405, error_body(
            f"Method not allowed ({shown}): {served_list()}.",
            "invalid_request_error",
            code="method_not_allowed",
        )
    family = _family(path)
    if family is None:
        return 404, error_body(
            f"Invalid URL ({shown}): {served_list()}.",
            "invalid_request_error",
            code="unknown_endpoint",
        )
    what, why = family
    if why == "chat":
        reason = f"{what} are not available through this proxy: {_CHAT_ONLY}"
        if passthrough:
            reason += (
                '; privacy.non_e2ee = "passthrough" forwards chat requests for models without '
                f"E2EE in plaintext, and does not apply to {what}"
            )
    elif why == "state":
        reason = f"{what} are not available: {_STATELESS}"
    else:
        reason = f"{what} are not available through this proxy"
    return 404, error_body(
        f"Invalid URL ({shown}): {reason}. {served_list()[0].upper()}{served_list()[1:]}.",
        "invalid_request_error",
        code="unsupported_endpoint",
    )
