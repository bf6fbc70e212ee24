"""One chat request, end to end: apply the field policy, resolve the model, attest, encrypt,
forward, decrypt.

Order of operations for an E2EE model (nothing reaches the chat endpoint before the key is
attested):

0. a request with tools, tool history or ``response_format`` for an E2EE model: resolve the
   model first and render those fields into message text (:func:`proxy.core.tools.prepare`),
   so that they only ever travel encrypted (see :mod:`proxy.service.emulation`);
1. apply the field policy (:func:`proxy.core.request.parse_chat_request`): precise 400s for
   malformed requests and for fields whose data would travel in plaintext;
2. get the model's attested key from the cache (one fetch for many waiters);
3. encrypt every message with a fresh client key pair and open the upstream stream (the key
   pairs are made ahead while the process is idle, :class:`~proxy.core.crypto.FreshKeys`,
   and topped up while the upstream thinks; each is used once);
4. read ahead until the first text field decrypted (or the stream ended), so that a rejected
   or stale key is caught *before* anything reaches the client; in that case the key is dropped,
   the model re-attested once and the request retried once with fresh encryption. At most
   ``max_read_ahead_bytes`` upstream bytes are read ahead (``upstream.max_read_ahead_bytes``);
   more closes the upstream and fails with ``upstream_read_ahead_exceeded``;
5. relay rebuilt, decrypted chunks (stream) or one aggregated ``chat.completion``, cut at the
   client's stop sequences. With emulation the chunks first go through the tool reader (and
   a re-ask opens a new attempt from step 2, signatures then checked on the attempt that
   answered); stop sequences cut the resulting text, never tool-call arguments.

A model without E2EE is refused (400 ``model_not_e2ee``) unless ``privacy.non_e2ee =
"passthrough"`` and the model is listed in ``privacy.passthrough_models``; an ``e2ee-`` id is
never sent in plaintext, whatever the catalogue says. Passthrough requests follow the same
field policy, without encryption, and carry ``X-Venice-Proxy-E2EE: false``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.core.crypto import FreshKeys
from proxy.core.errors import (
    DecryptionError,
    InvalidRequestError,
    ModelNotE2EEError,
    ModelNotFoundError,
    ProxyError,
    UpstreamStatusError,
)
from proxy.core.request import (
    ChatRequest,
    check_messages_for_emulation,
    check_upstream_model,
    encrypt_request,
    parse_chat_request,
    plaintext_body,
)
from proxy.core.response import ChunkDecryptor, ChunkRebuilder, has_text
from proxy.core.retry import RetryPolicy, RetryReason, retry_delay, retry_reason
from proxy.core.sse import DEFAULT_MAX_EVENT_BYTES
from proxy.core.stop import ChoiceStops
from proxy.core.tools import EMULATED_FIELDS, EmulationPlan, ToolsConfig, emulation_param, prepare
from proxy.service.catalog import E2EE_PREFIX, ModelCatalogue, ModelInfo, resolve_alias
from proxy.service.emulation import emulated_batches
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache
from proxy.service.relay import (
    DEFAULT_MAX_ANSWER_CHARS,
    Batch,
    StreamStats,
    decrypted_batches,
    stop_at,
)
from proxy.venice.client import UpstreamClient, UpstreamStream

_KEY_REJECTION_MARKERS = ("decrypt", "public key", "model_key", "model key", "e2ee header")
# Backend error types that mean "this key is not the enclave's (any more)" (Phala: S5).
_KEY_REJECTION_TYPES = frozenset({"e2ee_model_key_mismatch", "e2ee_decryption_failed"})
# Key pairs made ahead: enough for a long conversation (one per message, one for the client).
_FRESH_KEYS = 64


def _dumps(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads accepts "\ud800" escapes; a lone surrogate has no UTF-8 encoding.
        raise InvalidRequestError(
            "the request contains a lone UTF-16 surrogate (invalid Unicode)",
            code="invalid_unicode",
        ) from exc


@dataclass(slots=True)
class OpenedAnswer:
    """One answer on its way: the upstream stream opened, read ahead until its first decrypted
    text (``first``), the rest still to relay (``rest``), with the key that attested it."""

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
    plan: EmulationPlan | None = None
    """Tool/structured-output emulation for this request (None: relayed as the model wrote
    it). When set, ``first``/``rest`` are already the emulated client chunks."""

    async def aclose(self) -> None:
        """Close the upstream response (idempotent)."""
        await self.upstream.aclose()


def _is_key_rejection(exc: UpstreamStatusError) -> bool:
    """A 400 saying the enclave key is not (any more) the one the enclave holds."""
    if exc.upstream_status != 400:
        return False
    if exc.upstream_type in _KEY_REJECTION_TYPES or exc.code in _KEY_REJECTION_TYPES:
        return True
    text = exc.message.lower()
    return any(marker in text for marker in _KEY_REJECTION_MARKERS)


class _StaleKeyError(Exception):
    """The enclave did not accept our key or its first answer did not decrypt (rotation)."""

    def __init__(self, public_key: bytes, error: ProxyError) -> None:
        super().__init__("stale enclave key")
        self.public_key = public_key
        self.error = error


Attempt = Callable[[int], Awaitable[OpenedAnswer]]


DEFAULT_MAX_READ_AHEAD_BYTES = 512 * 1024


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
        passthrough_models: Collection[str] = (),
        forward_fields: Collection[str] = (),
        read_to_end_after_stop: bool = False,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryReason], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_read_ahead_bytes: int = DEFAULT_MAX_READ_AHEAD_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        tools: ToolsConfig | None = None,
    ) -> None:
        self.tools = tools or ToolsConfig()
        self.max_read_ahead_bytes = max_read_ahead_bytes
        self.max_event_bytes = max_event_bytes
        self.max_answer_chars = max_answer_chars
        self.fresh_keys = FreshKeys(_FRESH_KEYS)
        self._topping_up = False
        self.upstream = upstream
        self.catalogue = catalogue
        self.keys = keys
        self.aliases = dict(aliases)
        self.non_e2ee = non_e2ee
        self.passthrough_models = frozenset(passthrough_models)
        self.forward_fields = frozenset(forward_fields)
        # Strict signature checking needs the whole stream even after a stop sequence.
        self.read_to_end_after_stop = read_to_end_after_stop
        self.retry = retry or RetryPolicy()
        self._on_retry = on_retry
        self._sleep = sleep

    def passthrough_allowed(self, model: str) -> bool:
        """Whether prompts for ``model`` (a model without E2EE) may go in plaintext."""
        return (
            self.non_e2ee == "passthrough"
            and model in self.passthrough_models
            and not model.startswith(E2EE_PREFIX)
        )

    async def start(self, payload: Any, *, request_id: str | None = None) -> OpenedAnswer:
        """Apply the policy, attest, encrypt, open and read ahead. Raises before any client
        byte. ``request_id`` is the proxy's own id, sent upstream (never the client's).

        Tools, tool history and ``response_format`` for an E2EE model are emulated
        (:mod:`proxy.service.emulation`): :func:`proxy.core.tools.prepare` turns them into
        message text *before* the field policy sees the request, so they only ever travel
        encrypted; the outcome's chunks are then the emulated answer. Stop sequences then apply
        to the answer's text only (never to tool-call arguments), after emulation. For a
        passthrough model, with ``[tools] mode = "refuse"`` or a model in ``disabled_models``,
        such fields get the policy's 400.
        """
        extra = {"x-request-id": request_id} if request_id else {}
        if _wants_emulation(payload):
            emulated = await self._start_emulated(payload, extra)
            if emulated is not None:
                return emulated
        request = parse_chat_request(payload, forward_fields=self.forward_fields)
        model = resolve_alias(request.model, self.aliases)
        info = await self._lookup(model)
        if not info.supports_e2ee:
            if self.passthrough_allowed(model):
                return await self._with_retries(
                    lambda attempt: self._attempt_plaintext(request, model, attempt, extra)
                )
            raise ModelNotE2EEError(_not_e2ee_message(model), param="model")
        return await self._with_retries(
            lambda attempt: self._attempt_e2ee(request, model, attempt, extra)
        )

    async def _lookup(self, model: str) -> ModelInfo:
        check_upstream_model(model)
        info = await self.catalogue.lookup(model)
        if info is None:
            raise ModelNotFoundError(
                f"the model '{model}' does not exist upstream; "
                "GET /v1/models lists the E2EE models",
                param="model",
            )
        return info

    async def _start_emulated(
        self, payload: Mapping[str, Any], extra: Mapping[str, str]
    ) -> OpenedAnswer | None:
        """The emulated request's outcome, or None when the model is not E2EE (the policy then
        decides, as for any request)."""
        model = resolve_alias(payload["model"], self.aliases)
        info = await self._lookup(model)
        if not info.supports_e2ee:
            return None
        spec = info.raw.get("model_spec")
        check_messages_for_emulation(payload)
        prepared = prepare(
            payload,
            model_id=model,
            config=self.tools,
            model_spec=spec if isinstance(spec, Mapping) else None,
        )
        request = parse_chat_request(prepared.request, forward_fields=self.forward_fields)
        plan = prepared.plan
        if plan is None:  # only leftovers to drop (a tool_choice without tools)
            return await self._with_retries(
                lambda attempt: self._attempt_e2ee(request, model, attempt, extra)
            )
        stats = StreamStats()
        outcome = await self._with_retries(
            lambda attempt: self._attempt_e2ee(
                request, model, attempt, extra, emulated=True, stats=stats
            )
        )

        async def reopen(body: dict[str, Any]) -> OpenedAnswer:
            if self._on_retry:
                self._on_retry("tool_repair")
            again = parse_chat_request(body, forward_fields=self.forward_fields)
            attempt = await self._with_retries(
                lambda number: self._attempt_e2ee(
                    again, model, number, extra, emulated=True, stats=stats
                )
            )
            # The client-facing outcome now reads (and closes, and checks) this attempt.
            outcome.upstream = attempt.upstream
            outcome.key = attempt.key
            outcome.attempts += attempt.attempts
            return attempt

        batches = emulated_batches(
            plan,
            prepared.request,
            _Attempt(outcome.first, outcome.rest, outcome.upstream),
            reopen,
            client_stream=request.client_stream,
            stats=stats,
            max_answer_chars=self.max_answer_chars,
        )
        outcome.first = []
        outcome.rest = self._relayed(batches, request, stats)
        outcome.plan = plan
        return outcome

    async def _with_retries(self, attempt_once: Attempt) -> OpenedAnswer:
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

    def _relayed(
        self, batches: AsyncGenerator[Batch, None], request: ChatRequest, stats: StreamStats
    ) -> AsyncGenerator[Batch, None]:
        if not request.stops:
            return batches
        stops = ChoiceStops(request.stops, request.n)
        return stop_at(batches, stops, stats, read_to_end=self.read_to_end_after_stop)

    def _top_up_keys(self) -> None:
        """Make the key pairs a request took again, one per loop pass (so a pass that has
        other work does it first), starting once the attempt's answer has begun (its head is
        in; the upstream is still working on the first token). Started any earlier, the first
        key pair (about 46 µs) was made in the loop pass before the request was written."""
        if self._topping_up or not self.fresh_keys.wanted():
            return
        self._topping_up = True
        loop = asyncio.get_running_loop()
        loop.call_soon(self._make_key, loop)

    def _make_key(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fresh_keys.make_one()
        if self.fresh_keys.wanted():
            loop.call_soon(self._make_key, loop)
        else:
            self._topping_up = False

    async def _attempt_e2ee(
        self,
        request: ChatRequest,
        model: str,
        attempt: int,
        extra: Mapping[str, str],
        *,
        emulated: bool = False,
        stats: StreamStats | None = None,
    ) -> OpenedAnswer:
        """One encrypted attempt, opened and read ahead. ``emulated``: stop sequences are left
        to the caller (they apply after tool emulation); ``stats`` continues a request's
        counters across re-asks."""
        key = await self.keys.get(model)
        encrypted = encrypt_request(
            request, model_key=key.public_key, upstream_model=model, fresh=self.fresh_keys.take
        )
        stats = stats if stats is not None else StreamStats()
        try:
            upstream = await self.upstream.open_chat(
                _dumps(encrypted.body), {**encrypted.headers, **extra}
            )
        except UpstreamStatusError as exc:
            if _is_key_rejection(exc):
                raise _StaleKeyError(key.public_key, exc) from exc
            raise
        finally:
            self._top_up_keys()
        decryptor = ChunkDecryptor(encrypted.client_keys.private)
        batches = decrypted_batches(
            upstream.iter_bytes(),
            decryptor,
            stats,
            max_event_bytes=self.max_event_bytes,
            max_read_ahead_bytes=self.max_read_ahead_bytes,
        )
        # Whether a text field opened, seen before the stop sequences (which may hold back or
        # cut the answer's first text): only a first field that did not open means a stale key.
        opened: list[bool] = []
        if not emulated and request.stops:
            batches = _noting_text(batches, opened)
        rest = batches if emulated else self._relayed(batches, request, stats)
        first: Batch = []
        try:
            async for batch in rest:
                first.extend(batch)
                if any(has_text(chunk) for chunk in batch):
                    break
        except DecryptionError as exc:
            await upstream.aclose()
            if not opened and not any(has_text(chunk) for chunk in first):
                # The very first field did not open: the key is stale (rotation).
                raise _StaleKeyError(key.public_key, exc) from exc
            raise
        except BaseException:
            await upstream.aclose()
            raise
        return OpenedAnswer(
            model=model,
            e2ee=True,
            client_stream=request.client_stream,
            include_usage=request.include_usage,
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
        self, request: ChatRequest, model: str, attempt: int, extra: Mapping[str, str]
    ) -> OpenedAnswer:
        body = plaintext_body(request, upstream_model=model)
        upstream = await self.upstream.open_chat(_dumps(body), dict(extra))
        stats = StreamStats()
        batches = decrypted_batches(
            upstream.iter_bytes(), ChunkRebuilder(), stats, max_event_bytes=self.max_event_bytes
        )
        return OpenedAnswer(
            model=model,
            e2ee=False,
            client_stream=request.client_stream,
            include_usage=request.include_usage,
            first=[],
            rest=self._relayed(batches, request, stats),
            upstream=upstream,
            stats=stats,
            attempts=attempt,
            headers={"x-venice-proxy-e2ee": "false"},
        )


async def _noting_text(
    batches: AsyncGenerator[Batch, None], opened: list[bool]
) -> AsyncGenerator[Batch, None]:
    """``batches`` unchanged; appends to ``opened`` when the first batch with text passes."""
    try:
        async for batch in batches:
            if not opened and any(has_text(chunk) for chunk in batch):
                opened.append(True)
            yield batch
    finally:
        await batches.aclose()


def _wants_emulation(payload: Any) -> bool:
    """Whether a request carries a field tool emulation consumes (and names a model)."""
    return (
        isinstance(payload, Mapping)
        and isinstance(payload.get("model"), str)
        and (
            any(name in payload for name in EMULATED_FIELDS) or emulation_param(payload) is not None
        )
    )


@dataclass(slots=True)
class _Attempt:
    """The first attempt's batches, as :func:`emulated_batches` reads them."""

    first: Batch
    rest: AsyncIterator[Batch]
    upstream: UpstreamStream

    async def aclose(self) -> None:
        """Close this attempt's upstream response."""
        await self.upstream.aclose()


def _not_e2ee_message(model: str) -> str:
    if model.startswith(E2EE_PREFIX):
        return (
            f"the upstream's catalogue says '{model}' does not support end-to-end encryption; "
            "an e2ee- model is never sent a prompt in plaintext"
        )
    return (
        f"the model '{model}' does not support end-to-end encryption, and this proxy refuses "
        "to send prompts in plaintext (to allow it for this model: privacy.non_e2ee = "
        '"passthrough" and the model in privacy.passthrough_models); choose an e2ee- model '
        "from GET /v1/models"
    )


def _tcb_header(key: AttestedKey) -> dict[str, str]:
    status = key.report.tcb_status
    return {"x-venice-proxy-tcb-status": status} if status else {}
