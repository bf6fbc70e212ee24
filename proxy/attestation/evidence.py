"""Normalize Venice's three attestation report shapes into one :class:`Evidence` value.

Shapes (docs/protocol.md#report-shapes), told apart by their keys:

- ``aci``: ``api_version: "aci/…"`` or an ``attestation`` object holding ``evidence`` /
  ``workload_keyset``. No ``signing_public_key``: the E2EE key is the one among
  ``attestation.workload_keyset.e2ee_public_keys[*]`` (plus the ``e2ee`` keys in
  ``attestation.evidence.key_custody`` and any top-level ``signing_public_key``/``signing_key``)
  whose keccak address equals the quote's REPORTDATA[0:20]. The quote is also at
  ``attestation.evidence.quote``; the event log and vm_config are JSON strings there.
- ``near``: NEAR's report (``model_name``, ``signing_key``, ``compose_manager_attestation``);
  ``event_log`` is a list. Also served by some ``-p`` models.
- ``phala_legacy``: Phala's vllm-proxy (``quote`` duplicating ``intel_quote``, top-level
  ``vm_config``, ``event_log`` as a JSON string, EIP-55 ``signing_address``).

Common fields: ``intel_quote`` is hex (base64 tolerated), ``nvidia_payload`` is a JSON string
holding an object, ``model``/``verified``/``nonce``/``tee_provider``/``upstream_model`` are
Venice's additions. Every copy of the quote (``intel_quote``, ``quote``,
``attestation.evidence.quote``) and of the nonce (``nonce``, ``request_nonce``) must agree, and
so must ``signing_public_key`` and ``signing_key`` (as points: the compressed and the
uncompressed form of one key agree); a disagreement is a garbled report.

Garbled or missing essentials raise :class:`AttestationError` with a stable code:
``attestation_shape_unknown``, ``signing_address_missing``, ``signing_key_invalid`` (not a
string), ``signing_key_conflict``, ``quote_missing``, ``quote_encoding``, ``quote_conflict``,
``nonce_conflict``, ``nvidia_payload_invalid``, ``event_log_invalid``, ``info_invalid``,
``signing_algo_unsupported`` (an ``ed25519`` report: only secp256k1 keys can be encrypted to).
An unknown shape's message names the top-level keys it saw and the shapes it knows.

Deliberately NOT done here: any verification. A key that is present but not a curve point is
kept as text (``signing_public_key`` is then None) so the ``signing_key_valid`` check can report
it; ``verified``, ``model`` and the echoed nonce are recorded as sent (they are unauthenticated).
The aci ``report_data``/``quote_report_data`` copies, ``server_verification``,
``compose_manager_attestation`` and the aci key endorsements are ignored: only the quote binds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.attestation.quote import decode_quote, parse_tdx_quote
from proxy.core.crypto import ADDRESS_BYTES, address_of, parse_public_key
from proxy.core.errors import AttestationError, InvalidPublicKeyError, QuoteParseError

Shape = Literal["near", "phala_legacy", "aci"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One attestation response, normalized. Nothing in it is trusted yet."""

    shape: Shape
    model: str | None
    upstream_model_name: str | None
    echoed_nonce: str | None
    verified: bool | None
    signing_address: str
    signing_public_key: bytes | None = field(repr=False)
    signing_public_key_text: str | None
    key_source: str | None
    intel_quote: bytes = field(repr=False)
    nvidia_payload: dict[str, Any] | None = field(repr=False)
    event_log: list[dict[str, Any]] = field(repr=False)
    info: dict[str, Any] | None = field(repr=False)
    tee_provider: str | None
    raw: Mapping[str, Any] = field(repr=False)


def parse_attestation(body: Mapping[str, Any]) -> Evidence:
    """Normalize an attestation response body (not a capture wrapper; see :mod:`.capture`)."""
    if not isinstance(body, Mapping):
        raise AttestationError(
            "the attestation is not a JSON object", code="attestation_shape_unknown"
        )
    shape = _shape(body)
    _supported_algo(body)
    aci = _aci_parts(body) if shape == "aci" else {}
    evidence_part: Mapping[str, Any] = _mapping(aci.get("evidence"))
    quote = _quote(body, evidence_part)
    if shape == "aci":
        key_text, key, key_source = _aci_key(body, aci, quote)
    else:
        key_text, key, key_source = _direct_key(body)
    return Evidence(
        shape=shape,
        model=_str(body.get("model")),
        upstream_model_name=_str(body.get("upstream_model")) or _str(body.get("model_name")),
        echoed_nonce=_echoed_nonce(body),
        verified=body.get("verified") if isinstance(body.get("verified"), bool) else None,
        signing_address=_signing_address(body),
        signing_public_key=key,
        signing_public_key_text=key_text,
        key_source=key_source,
        intel_quote=quote,
        nvidia_payload=_nvidia_payload(body.get("nvidia_payload")),
        event_log=_event_log(body.get("event_log", evidence_part.get("event_log"))),
        info=_info(body, evidence_part),
        tee_provider=_str(body.get("tee_provider")),
        raw=body,
    )


def _shape(body: Mapping[str, Any]) -> Shape:
    api_version = body.get("api_version")
    nested = body.get("attestation")
    if (isinstance(api_version, str) and api_version.startswith("aci/")) or (
        isinstance(nested, Mapping) and ("evidence" in nested or "workload_keyset" in nested)
    ):
        return "aci"
    if any(key in body for key in ("model_name", "signing_key", "compose_manager_attestation")):
        return "near"
    if "quote" in body or "vm_config" in body or isinstance(body.get("event_log"), str):
        return "phala_legacy"
    if "intel_quote" in body:
        return "near"
    hint = " (a capture wrapper: unwrap it first)" if "_client_nonce" in body else ""
    keys = ", ".join(sorted(str(key)[:40] for key in body)[:20]) or "none"
    raise AttestationError(
        f"the attestation matches no known report shape{hint}; top-level keys: {keys}; "
        f"known shapes: {KNOWN_SHAPES}",
        code="attestation_shape_unknown",
    )


KNOWN_SHAPES = (
    "near (model_name, signing_key or compose_manager_attestation), "
    "phala_legacy (quote, vm_config or a string event_log), "
    "aci (api_version aci/… or attestation.evidence)"
)


def _supported_algo(body: Mapping[str, Any]) -> None:
    algo = body.get("signing_algo")
    if isinstance(algo, str) and algo.strip().lower() in ("ed25519", "eddsa"):
        raise AttestationError(
            f"the attestation's signing_algo is {algo[:20]!r}: ed25519 is not supported (E2EE "
            "needs the secp256k1 key of an ecdsa report; ask for signing_algo=ecdsa)",
            code="signing_algo_unsupported",
        )


def _aci_parts(body: Mapping[str, Any]) -> Mapping[str, Any]:
    nested = body.get("attestation")
    if not isinstance(nested, Mapping):
        raise AttestationError(
            "the aci attestation has no attestation object", code="attestation_shape_unknown"
        )
    return nested


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _signing_address(body: Mapping[str, Any]) -> str:
    address = body.get("signing_address")
    if not isinstance(address, str) or not address:
        raise AttestationError(
            "the attestation has no signing_address", code="signing_address_missing"
        )
    return address


def _echoed_nonce(body: Mapping[str, Any]) -> str | None:
    values = [v for v in (body.get("nonce"), body.get("request_nonce")) if isinstance(v, str)]
    if len({v.lower() for v in values}) > 1:
        raise AttestationError("the attestation echoes two different nonces", code="nonce_conflict")
    return values[0] if values else None


def _quote(body: Mapping[str, Any], evidence_part: Mapping[str, Any]) -> bytes:
    texts = [
        text
        for text in (body.get("intel_quote"), body.get("quote"), evidence_part.get("quote"))
        if text is not None
    ]
    if not texts:
        raise AttestationError("the attestation has no intel_quote", code="quote_missing")
    quotes = {decode_quote(text) for text in texts}
    if len(quotes) > 1:
        raise AttestationError(
            "the attestation carries two different quotes", code="quote_conflict"
        )
    return quotes.pop()


def _key_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AttestationError(f"{name} is not a string", code="signing_key_invalid")
    return value


def _try_key(text: str) -> bytes | None:
    try:
        return parse_public_key(text)
    except InvalidPublicKeyError:
        return None


def _normalized(text: str) -> str:
    """One form of a key for comparison: its uncompressed point when the text is a valid key
    (so the compressed and the uncompressed form of one key agree), else the bare lower-case
    hex (``04`` added to 64 bytes)."""
    key = _try_key(text)
    if key is not None:
        return key.hex()
    bare = text.lower().removeprefix("0x")
    return "04" + bare if len(bare) == 128 else bare


def _direct_key(body: Mapping[str, Any]) -> tuple[str | None, bytes | None, str | None]:
    named = [
        (name, text)
        for name in ("signing_public_key", "signing_key")
        if (text := _key_text(body.get(name), name)) is not None
    ]
    if not named:
        return None, None, None
    if len({_normalized(text) for _, text in named}) > 1:
        raise AttestationError(
            "signing_public_key and signing_key disagree", code="signing_key_conflict"
        )
    name, text = named[0]
    return text, _try_key(text), name


def _aci_key(
    body: Mapping[str, Any], aci: Mapping[str, Any], quote: bytes
) -> tuple[str | None, bytes | None, str | None]:
    """Pick the E2EE key whose address is the one the quote's REPORTDATA commits to."""
    candidates = _aci_candidates(body, aci)
    if not candidates:
        return None, None, None
    try:
        bound_address = parse_tdx_quote(quote, require_tdx=False).report.report_data[:ADDRESS_BYTES]
    except QuoteParseError:
        # The quote_parse check reports this; without REPORTDATA no key can be chosen.
        return None, None, None
    for source, text in candidates:
        key = _try_key(text)
        if key is not None and address_of(key) == bound_address:
            return text, key, source
    return None, None, None


def _aci_candidates(body: Mapping[str, Any], aci: Mapping[str, Any]) -> list[tuple[str, str]]:
    candidates: list[tuple[str, str]] = []
    keyset = _mapping(aci.get("workload_keyset"))
    entries = keyset.get("e2ee_public_keys")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        entry_map = _mapping(entry)
        text = entry_map.get("public_key")
        if isinstance(text, str):
            label = entry_map.get("key_id", index)
            candidates.append((f"attestation.workload_keyset.e2ee_public_keys[{label}]", text))
    custody = _mapping(_mapping(aci.get("evidence")).get("key_custody")).get("keys")
    for index, entry in enumerate(custody if isinstance(custody, list) else []):
        entry_map = _mapping(entry)
        role, text = entry_map.get("role"), entry_map.get("public_key")
        if isinstance(role, str) and role.startswith("e2ee") and isinstance(text, str):
            candidates.append((f"attestation.evidence.key_custody.keys[{index}]", text))
    for name in ("signing_public_key", "signing_key"):
        text = _key_text(body.get(name), name)
        if text is not None:
            candidates.append((name, text))
    return candidates


def _json_value(value: Any, code: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise AttestationError(f"{what} is not valid JSON", code=code) from exc


def _nvidia_payload(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    parsed = _json_value(value, "nvidia_payload_invalid", "nvidia_payload")
    if not isinstance(parsed, Mapping):
        raise AttestationError("nvidia_payload is not a JSON object", code="nvidia_payload_invalid")
    return dict(parsed)


def _event_log(value: Any) -> list[dict[str, Any]]:
    if value is None or value == "":
        return []
    parsed = _json_value(value, "event_log_invalid", "event_log")
    if not isinstance(parsed, list) or not all(isinstance(entry, Mapping) for entry in parsed):
        raise AttestationError("event_log is not a list of objects", code="event_log_invalid")
    return [dict(entry) for entry in parsed]


def _info(body: Mapping[str, Any], evidence_part: Mapping[str, Any]) -> dict[str, Any] | None:
    raw_info = body.get("info")
    if raw_info is not None and not isinstance(raw_info, Mapping):
        raise AttestationError("info is not a JSON object", code="info_invalid")
    info: dict[str, Any] = dict(raw_info) if raw_info is not None else {}
    if "tcb_info" in info:
        tcb_info = _json_value(info["tcb_info"], "info_invalid", "info.tcb_info")
        if not isinstance(tcb_info, Mapping):
            raise AttestationError("info.tcb_info is not a JSON object", code="info_invalid")
        info["tcb_info"] = dict(tcb_info)
    for name in ("app_compose", "compose_hash", "os_image_hash"):
        # An aci gateway that publishes its manifest puts it in attestation.evidence.
        if name not in info and isinstance(evidence_part.get(name), str):
            info[name] = evidence_part[name]
    vm_config = body.get("vm_config", evidence_part.get("vm_config"))
    if "vm_config" not in info and vm_config is not None:
        info["vm_config"] = vm_config
    return info or None
