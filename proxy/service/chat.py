"""One chat request, end to end: validate, resolve the model, attest, encrypt, forward, decrypt.

Order of operations for an E2EE model (nothing reaches the chat endpoint before the key is
attested):

1. validate the request shape (precise 400s) and refuse what E2EE cannot protect (tools, files);
2. get the model's attested key from the cache (one fetch for many waiters);
3. encrypt every message with a fresh client key pair and open the upstream stream;
4. read ahead until the first text field decrypted (or the stream ended), so that a rejected
   or stale key is caught *before* anything reaches the client; in that case the key is dropped,
   the model re-attested once and the request retried once with fresh encryption. At most
   ``max_read_ahead_bytes`` upstream bytes are read ahead (``upstream.max_read_ahead_bytes``);
   more closes the upstream and fails with ``upstream_read_ahead_exceeded``;
5. relay decrypted chunks (stream) or one aggregated ``chat.completion``.

Models without E2EE are refused unless ``privacy.non_e2ee = "passthrough"``; then they are
forwarded in plaintext and the response carries ``X-Venice-Proxy-E2EE: false``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.core.errors import (
    DecryptionError,
    InvalidRequestError,
    ModelNotFoundError,
    ProxyError,
    UpstreamStatusError,
    UpstreamTooLargeError,
)
from proxy.core.protocol import ChunkDecryptor, encrypt_request
from proxy.core.retry import RetryPolicy, RetryReason, retry_delay, retry_reason
from proxy.core.sse import DEFAULT_MAX_EVENT_BYTES
from proxy.service.catalog import ModelCatalogue, resolve_alias
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache
from proxy.service.relay import Batch, StreamStats, decrypted_batches, has_text
from proxy.venice.client import UpstreamClient, UpstreamStream

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_KEY_REJECTION_MARKERS = ("decrypt", "public key", "model_key", "model key", "e2ee header")
_MAX_N = 128
_MAX_MODEL_NAME = 256
DEFAULT_MAX_READ_AHEAD_BYTES = 512 * 1024


def _dumps(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads accepts "\ud800" escapes; a lone surrogate has no UTF-8 encoding.
        raise InvalidRequestError(
            "the request contains a lone UTF-16 surrogate (invalid Unicode)",
            code="invalid_unicode",
        ) from exc


def validate_chat_request(payload: Any) -> dict[str, Any]:
    """The request as a dict, or :class:`InvalidRequestError` naming the bad parameter.

    Checked here: the shape OpenAI itself enforces (model, messages, roles, stream, n,
    stream_options). Content types are checked by :func:`proxy.core.protocol.encrypt_request`.
    Unknown fields are kept and passed through.
    """
    if not isinstance(payload, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(
            "'model' is required and must be a non-empty string", param="model"
        )
    if len(model) > _MAX_MODEL_NAME:
        raise InvalidRequestError(
            f"'model' is longer than {_MAX_MODEL_NAME} characters", param="model"
        )
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            "'model' contains invalid Unicode (a lone surrogate)",
            param="model",
            code="invalid_unicode",
        ) from None
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(
            "'messages' is required and must be a non-empty array", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"messages[{index}] must be an object", param=f"messages[{index}]"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequestError(
                f"messages[{index}].role must be one of {', '.join(sorted(_ROLES))}",
                param=f"messages[{index}].role",
            )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", param="stream")
    n = payload.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_N):
        raise InvalidRequestError(f"'n' must be an integer from 1 to {_MAX_N}", param="n")
    options = payload.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequestError("'stream_options' must be an object", param="stream_options")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise InvalidRequestError(
                "'stream_options.include_usage' must be a boolean",
                param="stream_options.include_usage",
            )
    return payload


@dataclass(slots=True)
class ChatOutcome:
    """An upstream stream that has been opened and read ahead, ready to relay."""

    model: str
    e2ee: bool
    client_stream: bool
    include_usage: bool
    first: Batch
    rest: AsyncIterator[Batch]
    upstream: UpstreamStream
    stats: StreamStats
    key: AttestedKey | None = None
    attempts: int = 1
    headers: dict[str, str] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Close the upstream response (idempotent)."""
        await self.upstream.aclose()


def _is_key_rejection(exc: UpstreamStatusError) -> bool:
    if exc.upstream_status != 400:
        return False
    text = exc.message.lower()
    return any(marker in text for marker in _KEY_REJECTION_MARKERS)


class _StaleKeyError(Exception):
    """The enclave did not accept our key or its first answer did not decrypt (rotation)."""

    def __init__(self, public_key: bytes, error: ProxyError) -> None:
        super().__init__("stale enclave key")
        self.public_key = public_key
        self.error = error


Attempt = Callable[[int], Awaitable[ChatOutcome]]


class _ReadAhead:
    """Counts the upstream bytes read before the first text; past ``limit`` it raises
    :class:`UpstreamTooLargeError` (the caller closes the upstream). :meth:`done` lifts the
    bound once the first text is in."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._read = 0
        self._active = True

    def done(self) -> None:
        self._active = False

    async def bounded(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for data in body:
            if self._active:
                self._read += len(data)
                if self._read > self._limit:
                    raise UpstreamTooLargeError(
                        f"the upstream sent more than {self._limit} bytes before the first "
                        "text of its answer (upstream.max_read_ahead_bytes)",
                        code="upstream_read_ahead_exceeded",
                    )
            yield data


class ChatService:
    """Runs chat requests against the upstream; shared by all requests of one app.

    ``max_read_ahead_bytes`` bounds the upstream bytes read before an answer's first text
    (``upstream.max_read_ahead_bytes``), ``max_event_bytes`` one server-sent event
    (``upstream.max_event_bytes``).
    """

    def __init__(
        self,
        upstream: UpstreamClient,
        catalogue: ModelCatalogue,
        keys: AttestedKeyCache,
        *,
        aliases: Mapping[str, str],
        non_e2ee: Literal["reject", "passthrough"],
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryReason], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_read_ahead_bytes: int = DEFAULT_MAX_READ_AHEAD_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.max_read_ahead_bytes = max_read_ahead_bytes
        self.max_event_bytes = max_event_bytes
        self.upstream = upstream
        self.catalogue = catalogue
        self.keys = keys
        self.aliases = dict(aliases)
        self.non_e2ee = non_e2ee
        self.retry = retry or RetryPolicy()
        self._on_retry = on_retry
        self._sleep = sleep

    async def start(self, request: dict[str, Any], *, request_id: str | None = None) -> ChatOutcome:
        """Validate, attest, encrypt, open and read ahead. Raises before any client byte."""
        validate_chat_request(request)
        model = resolve_alias(request["model"], self.aliases)
        info = await self.catalogue.lookup(model)
        if info is None:
            raise ModelNotFoundError(
                f"the model '{model}' does not exist upstream; "
                "GET /v1/models lists the E2EE models",
                param="model",
            )
        extra = {"x-request-id": request_id} if request_id else {}
        if not info.supports_e2ee:
            if self.non_e2ee == "passthrough":
                return await self._with_retries(
                    lambda attempt: self._attempt_plaintext(request, model, attempt, extra)
                )
            raise ModelNotFoundError(
                f"the model '{model}' does not support end-to-end encryption, and this proxy "
                'refuses to send prompts in plaintext (set privacy.non_e2ee = "passthrough" '
                "to allow it); choose an e2ee- model from GET /v1/models",
                param="model",
                code="model_not_e2ee",
            )
        return await self._with_retries(
            lambda attempt: self._attempt_e2ee(request, model, attempt, extra)
        )

    async def _with_retries(self, attempt_once: Attempt) -> ChatOutcome:
        """Run attempts: one re-attestation for a stale key, bounded retries for transient
        upstream faults. Every attempt encrypts afresh."""
        started = time.monotonic()
        key_retried = False
        retries = 0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await attempt_once(attempt)
            except _StaleKeyError as stale:
                if key_retried:
                    raise stale.error from None
                key_retried = True
                self.keys.invalidate_key(stale.public_key)
                if self._on_retry:
                    self._on_retry("key_rejected")
            except ProxyError as exc:
                delay = retry_delay(
                    self.retry,
                    retries,
                    exc,
                    elapsed_s=time.monotonic() - started,
                    now=time.time(),
                )
                if delay is None:
                    raise
                retries += 1
                if self._on_retry:
                    self._on_retry(retry_reason(exc) or "server_error")
                await self._sleep(delay)

    async def _attempt_e2ee(
        self, request: dict[str, Any], model: str, attempt: int, extra: Mapping[str, str]
    ) -> ChatOutcome:
        key = await self.keys.get(model)
        encrypted = encrypt_request(request, model_key=key.public_key, upstream_model=model)
        stats = StreamStats()
        try:
            upstream = await self.upstream.open_chat(
                _dumps(encrypted.body), {**encrypted.headers, **extra}
            )
        except UpstreamStatusError as exc:
            if _is_key_rejection(exc):
                raise _StaleKeyError(key.public_key, exc) from exc
            raise
        decryptor = ChunkDecryptor(encrypted.client_keys.private)
        read_ahead = _ReadAhead(self.max_read_ahead_bytes)
        rest = decrypted_batches(
            read_ahead.bounded(upstream.iter_bytes()),
            decryptor,
            stats,
            max_event_bytes=self.max_event_bytes,
        )
        first: Batch = []
        try:
            async for batch in rest:
                first.extend(batch)
                if any(has_text(chunk) for chunk in batch):
                    break
            read_ahead.done()
        except DecryptionError as exc:
            await upstream.aclose()
            if not any(has_text(chunk) for chunk in first):
                # The very first field did not open: the key is stale (rotation).
                raise _StaleKeyError(key.public_key, exc) from exc
            raise
        except BaseException:
            await upstream.aclose()
            raise
        return ChatOutcome(
            model=model,
            e2ee=True,
            client_stream=bool(request.get("stream")),
            include_usage=encrypted.include_usage,
            first=first,
            rest=rest,
            upstream=upstream,
            stats=stats,
            key=key,
            attempts=attempt,
            headers={
                "x-venice-proxy-e2ee": "true",
                "x-venice-proxy-signing-address": key.signing_address,
                **_tcb_header(key),
            },
        )

    async def _attempt_plaintext(
        self, request: dict[str, Any], model: str, attempt: int, extra: Mapping[str, str]
    ) -> ChatOutcome:
        client_stream = bool(request.get("stream"))
        options = request.get("stream_options")
        include_usage = (
            client_stream and isinstance(options, dict) and options.get("include_usage") is True
        )
        body = {
            **request,
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        upstream = await self.upstream.open_chat(_dumps(body), dict(extra))
        stats = StreamStats()
        return ChatOutcome(
            model=model,
            e2ee=False,
            client_stream=client_stream,
            include_usage=include_usage,
            first=[],
            rest=decrypted_batches(
                upstream.iter_bytes(), None, stats, max_event_bytes=self.max_event_bytes
            ),
            upstream=upstream,
            stats=stats,
            attempts=attempt,
            headers={"x-venice-proxy-e2ee": "false"},
        )


def _tcb_header(key: AttestedKey) -> dict[str, str]:
    status = key.report.tcb_status
    return {"x-venice-proxy-tcb-status": status} if status else {}
