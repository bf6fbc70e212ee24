"""Tool calling and structured outputs, emulated inside the encrypted messages. Pure, sans-I/O.

Venice's E2EE API encrypts message contents only; ``tools``, ``tool_choice``, tool-call history
and ``response_format`` schemas would travel in plaintext (or be dropped). This package turns
them into message text, so they are encrypted like the rest of the conversation, and reads the
model's text answer back into OpenAI ``tool_calls`` or a validated JSON answer.

Modules (one concept each): :mod:`.conventions` (how each model family writes calls; which
family a model is), :mod:`.render` (request -> plain-text request + :class:`EmulationPlan`),
:mod:`.formats` (one call block -> calls), :mod:`.stream` (incremental scanner),
:mod:`.parser` (whole-text parser), :mod:`.validate` (JSON Schema checks), :mod:`.repair`
(judge an answer; the re-ask), :mod:`.transform` (OpenAI chunks/completions in and out).

Wiring interface (used by ``service/chat.py`` and ``service/emulation.py``)
===========================================================================

1. Before encryption, once per client request, after validation and alias resolution::

       config = ToolsConfig.from_settings(settings.tools)          # once, at the edge
       prepared = prepare(request, model_id=model, config=config,
                          model_spec=info.raw.get("model_spec"))   # may raise 400s
       body, plan = prepared.request, prepared.plan

   ``prepared.request`` has no ``tools``/``tool_choice``/``parallel_tool_calls``/``functions``/
   ``function_call``/``response_format`` and only system/user/assistant messages whose
   tool-related content is text; encrypt and send it as any request. ``plan is None``: relay as
   today. Non-E2EE passthrough models should not go through :func:`prepare` (their upstream
   does tools natively). ``prepare`` raises ``UnsupportedForE2EEError`` (param = the first
   field needing emulation) when ``[tools] mode = "refuse"`` or the model is disabled, and
   ``InvalidRequestError`` for malformed tool fields or ``n > 1``.

2. Streaming client (``plan.stream``), one attempt::

       transformer = ToolStreamTransformer(plan, attempt=k, prior_usage=usage)
       for chunk in decrypted_chunks:                 # after ChunkDecryptor, before SSE encode
           for out in transformer.feed(chunk):       # 0..1 chunks; usage is held back
               send(out)
       result = transformer.finish()                 # after the upstream's [DONE]
       # StreamFinished: send result.chunks, then [DONE]
       # RepairNeeded:   body = with_repair(body, result); usage = result.usage;
       #                 k += 1; open a new upstream stream (fresh encryption) and loop;
       #                 the client's stream stays open, nothing is sent for the failed attempt
       # ToolEmulationError (raised): report in-band like any ProxyError, then [DONE]

   The relay must not forward upstream usage chunks itself in this mode (``feed`` holds them
   and ``finish`` emits the summed usage when the client asked for it: drop the usage chunk
   from ``result.chunks`` if ``include_usage`` is false). The read-ahead in ``chat.py`` may
   see no text for a while (held calls): it should stop at the first decrypted field of any
   kind, as before. Signature checks apply per upstream attempt.

3. Non-streaming client: aggregate the decrypted chunks as today, then::

       result = finish_completion(plan, completion, attempt=k, prior_usage=usage)
       # CompletionFinished: return result.completion
       # RepairNeeded / ToolEmulationError: as above (the error becomes the HTTP error body)

4. Attempts: at most ``plan.repair_attempts`` re-asks (``[tools] repair_attempts``, default 1);
   ``judge`` raises :class:`ToolEmulationError` (502, codes ``tool_call_invalid``,
   ``tool_call_missing``, ``structured_output_invalid``) once they are used up. Every re-ask
   is a complete new encrypted request: the re-ask messages never appear in plaintext, and the
   problem texts must not be logged (log ``exc.log_code`` only, as for every ProxyError).

Privacy rule: everything tool-related (names, descriptions, schemas, arguments, results,
re-asks) exists upstream only inside encrypted message contents. :class:`EmulationPlan` holds the
client's definitions; its ``repr`` shows counts only; never log its fields.
"""

from proxy.core.tools.conventions import CONVENTION_NAMES, Convention, choose_convention
from proxy.core.tools.errors import ToolEmulationError
from proxy.core.tools.parser import ParsedOutput, parse_output
from proxy.core.tools.plan import EmulationPlan, ResponseSpec, ToolChoice, ToolsConfig
from proxy.core.tools.render import EMULATED_FIELDS, Prepared, emulation_param, prepare
from proxy.core.tools.repair import Accepted, RepairNeeded, judge, merge_usage, with_repair
from proxy.core.tools.stream import MalformedCall, TextDelta, ToolCallFound, ToolCallScanner
from proxy.core.tools.transform import (
    CompletionFinished,
    StreamFinished,
    ToolStreamTransformer,
    finish_completion,
    new_call_id,
)

__all__ = [
    "CONVENTION_NAMES",
    "EMULATED_FIELDS",
    "Accepted",
    "CompletionFinished",
    "Convention",
    "EmulationPlan",
    "MalformedCall",
    "ParsedOutput",
    "Prepared",
    "RepairNeeded",
    "ResponseSpec",
    "StreamFinished",
    "TextDelta",
    "ToolCallFound",
    "ToolCallScanner",
    "ToolChoice",
    "ToolEmulationError",
    "ToolStreamTransformer",
    "ToolsConfig",
    "choose_convention",
    "emulation_param",
    "finish_completion",
    "judge",
    "merge_usage",
    "new_call_id",
    "parse_output",
    "prepare",
    "with_repair",
]
