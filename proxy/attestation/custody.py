"""The aci/1 gateway's key custody chain: why the key we encrypt to is the gateway's own.

Wire format (docs/protocol.md#aci-shape)::

    {"workload_id": "sha256:<hex>", "workload_keyset_digest": "sha256:<hex>",
     "attestation": {
        "workload_keyset": {"workload_identity": {"public_key": {"algo", "public_key"},
                                                  "subject": null | str},
                            "keyset_epoch": {"version": u64, "not_after": u64},
                            "receipt_signing_keys": [{"key_id", "algo", "public_key"}],
                            "e2ee_public_keys": [{"key_id", "algo", "public_key"}],
                            "tls_public_keys": [{"domain"?, "spki_sha256"}]},
        "keyset_endorsement": {"algo": "ecdsa-secp256k1" | "ed25519", "value": hex},
        "evidence": {"key_custody": {"provider": "dstack-kms",
                                     "keys": [{"role", "path", "purpose", "algo", "public_key",
                                               "signature_chain": [hex(65), hex(65)]}]},
                     "event_log": "<JSON string; RTMR3 holds the app-id event>",
                     "downstream_tls_binding": {"domain", "spki_sha256"}}}}

Checks (tier ``custody``), each exactly once; on a NEAR or Phala report they are not applicable
(``ok=None``, not enforced: there the key is the attested host's own):

``keyset_digest``
    sha256 of the RFC 8785 (JCS) canonical keyset equals ``workload_keyset_digest``. The keyset
    is first projected onto the fields the ACI spec digests (extra wire fields are not covered).
``keyset_membership``
    the E2EE key chosen by REPORTDATA (:mod:`.evidence`) is one of ``e2ee_public_keys``.
``keyset_endorsement``
    the workload identity key signs ``sha256(JCS({"purpose": "aci.keyset.endorsement.v1",
    "workload_keyset_digest": <recomputed>}))`` (secp256k1 r||s, or ed25519), and
    ``workload_id = sha256(JCS(identity public key))``.
``custody_app_key``
    the custody entry of our E2EE key (``provider`` ``dstack-kms``): ``signature_chain[0]`` is a
    recoverable secp256k1 signature over ``keccak256(purpose ":" compressed key hex)`` and
    recovers the dstack app key; the identity key's entry recovers the same app key.
``custody_kms_root``
    ``signature_chain[1]`` over ``keccak256("dstack-kms-issued:" || app_id(20) || compressed app
    key)`` recovers a KMS root that is in the accepted list (shipped data, or
    ``attestation.gateway_kms_roots``).
``gateway_app_id``
    the app id, read from the RTMR3 ``app-id`` event of a log that replays to the quote (so it
    is authenticated once DCAP passes), is in the accepted list (shipped, or
    ``attestation.gateway_app_ids``); a non-null keyset ``subject`` must restate it.
A check that cannot run because an earlier enforced check failed reports ``ok=False`` with
"not evaluated: <code> failed" and is not itself enforced: the earlier failure already decides
the verdict, and the report names the root cause once.

``keyset_expiry``
    advisory: ``keyset_epoch.not_after`` is after ``now``. The keyset is digested but not bound
    by the quote (REPORTDATA binds only the key's address and our nonce), so an operator who
    rewrites the response can change ``not_after``: this bounds rotation against an honest
    gateway, nothing more.

Deliberately NOT checked: the receipt and TLS keys' own custody, ``source_provenance`` (a git
commit built at boot, not a measured binary), ``downstream_tls_binding`` (covered by neither the
digest nor the custody chain; shown as an unverified claim) and ``freshness`` (REPORTDATA's
nonce is what proves freshness).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import rfc8785
from coincurve import PublicKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.attestation.eventlog import EventLogError, parse_event_log, replay, runtime_claim
from proxy.attestation.evidence import Evidence
from proxy.attestation.quote import TdxQuote
from proxy.attestation.report import TIER_CUSTODY, CheckResult
from proxy.core.crypto import keccak256

KEYSET_DIGEST: Final = "keyset_digest"
KEYSET_MEMBERSHIP: Final = "keyset_membership"
KEYSET_ENDORSEMENT: Final = "keyset_endorsement"
CUSTODY_APP_KEY: Final = "custody_app_key"
CUSTODY_KMS_ROOT: Final = "custody_kms_root"
GATEWAY_APP_ID: Final = "gateway_app_id"
KEYSET_EXPIRY: Final = "keyset_expiry"

CUSTODY_CHECK_CODES: Final = (
    KEYSET_DIGEST,
    KEYSET_MEMBERSHIP,
    KEYSET_ENDORSEMENT,
    CUSTODY_APP_KEY,
    CUSTODY_KMS_ROOT,
    GATEWAY_APP_ID,
    KEYSET_EXPIRY,
)

ENDORSEMENT_PURPOSE: Final = "aci.keyset.endorsement.v1"
KMS_ISSUED_PREFIX: Final = b"dstack-kms-issued:"
CUSTODY_PROVIDER: Final = "dstack-kms"
_SECP256K1_ALGOS: Final = frozenset({"ecdsa-secp256k1", "secp256k1", "ecdsa"})


class _MalformedError(ValueError):
    """A keyset or custody entry that does not have the spec's shape."""


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    """What the custody chain and the gateway evidence say (for reports and the status page)."""

    app_id: str | None
    kms_root: str | None
    app_key: str | None
    keyset_version: int | None
    keyset_not_after: int | None
    workload_id: str | None
    downstream_tls: str | None
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "kms_root": self.kms_root,
            "app_key": self.app_key,
            "keyset_version": self.keyset_version,
            "keyset_not_after": self.keyset_not_after,
            "workload_id": self.workload_id,
            "downstream_tls": self.downstream_tls,
            "source": self.source,
        }


def _result(code: str, ok: bool | None, detail: str, enforced: bool = True) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=TIER_CUSTODY)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(mapping: Mapping[str, Any], key: str, where: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str):
        raise _MalformedError(f"{where}.{key} is not a string")
    return value


def _integer(mapping: Mapping[str, Any], key: str, where: str) -> int:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _MalformedError(f"{where}.{key} is not an unsigned integer")
    return value


def _keyed(entries: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise _MalformedError(f"{where} is not a list")
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        item = _mapping(entry)
        label = f"{where}[{index}]"
        out.append(
            {
                "key_id": _text(item, "key_id", label),
                "algo": _text(item, "algo", label),
                "public_key": _text(item, "public_key", label),
            }
        )
    return out


def canonical_keyset(keyset: Mapping[str, Any]) -> dict[str, Any]:
    """The keyset projected onto the fields the ACI spec digests (raises on a wrong shape)."""
    identity = _mapping(keyset.get("workload_identity"))
    public = _mapping(identity.get("public_key"))
    subject = identity.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise _MalformedError("workload_identity.subject is neither null nor a string")
    epoch = _mapping(keyset.get("keyset_epoch"))
    tls_entries = keyset.get("tls_public_keys")
    if not isinstance(tls_entries, list):
        raise _MalformedError("tls_public_keys is not a list")
    tls: list[dict[str, Any]] = []
    for index, entry in enumerate(tls_entries):
        item = _mapping(entry)
        value: dict[str, Any] = {"spki_sha256": _text(item, "spki_sha256", f"tls[{index}]")}
        if item.get("domain") is not None:
            value["domain"] = _text(item, "domain", f"tls[{index}]")
        tls.append(value)
    return {
        "workload_identity": {
            "public_key": {
                "algo": _text(public, "algo", "workload_identity.public_key"),
                "public_key": _text(public, "public_key", "workload_identity.public_key"),
            },
            "subject": subject,
        },
        "keyset_epoch": {
            "version": _integer(epoch, "version", "keyset_epoch"),
            "not_after": _integer(epoch, "not_after", "keyset_epoch"),
        },
        "receipt_signing_keys": _keyed(keyset.get("receipt_signing_keys"), "receipt_signing_keys"),
        "e2ee_public_keys": _keyed(keyset.get("e2ee_public_keys"), "e2ee_public_keys"),
        "tls_public_keys": tls,
    }


def jcs_digest(value: Any) -> str:
    """``"sha256:" + hex(sha256(RFC 8785 canonical JSON of value))``."""
    try:
        canonical = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise _MalformedError(f"not canonicalizable under RFC 8785: {exc}") from exc
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _key_bytes(text: str) -> bytes | None:
    bare = text.strip().lower().removeprefix("0x")
    if len(bare) == 128:
        bare = "04" + bare
    try:
        return PublicKey(bytes.fromhex(bare)).format(compressed=False)
    except ValueError:
        return None


def recover(message: bytes, signature_hex: str) -> PublicKey:
    """The secp256k1 key whose 65-byte recoverable signature (r||s||v) signs keccak256(message)."""
    try:
        signature = bytearray(bytes.fromhex(signature_hex.strip().removeprefix("0x")))
    except (ValueError, AttributeError) as exc:
        raise _MalformedError("a signature is not hex") from exc
    if len(signature) != 65:
        raise _MalformedError(f"a signature is {len(signature)} bytes, not 65")
    if signature[64] >= 27:
        signature[64] -= 27
    if signature[64] > 3:
        raise _MalformedError("a signature has a recovery id above 3")
    try:
        return PublicKey.from_signature_and_message(
            bytes(signature), keccak256(message), hasher=None
        )
    except ValueError as exc:
        raise _MalformedError("a signature recovers no key") from exc


def _verify_secp256k1(key_text: str, message: bytes, signature: bytes) -> bool:
    key = _key_bytes(key_text)
    if key is None or len(signature) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        return PublicKey(key).verify(der, hashlib.sha256(message).digest(), hasher=None)
    except ValueError:
        return False


def _verify_ed25519(key_text: str, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_text)).verify(signature, message)
    except (ValueError, InvalidSignature):
        return False
    return True


def _not_applicable(shape: str) -> list[CheckResult]:
    detail = f"not applicable: a {shape} report has no workload keyset (the key is the host's own)"
    return [_result(code, None, detail, False) for code in CUSTODY_CHECK_CODES]


@dataclass(slots=True)
class _State:
    """Values the checks hand on to later checks."""

    digest: str | None = None
    app_key: PublicKey | None = None
    app_id: bytes | None = None
    kms_root: str | None = None
    dependent_enforced: bool = True


def custody_checks(
    evidence: Evidence,
    quote: TdxQuote | None,
    quote_failure: str,
    *,
    now: int,
    kms_roots: frozenset[str],
    app_ids: frozenset[str],
    replay_enforced: bool = True,
) -> tuple[list[CheckResult], GatewayFacts | None]:
    """The seven custody results (one each) and the gateway facts (aci reports only).

    When the event log does not replay, the app id is unknown: ``gateway_app_id`` and
    ``custody_kms_root`` then fail as not evaluated, enforced only when ``event_log_replay``
    is not (``replay_enforced`` False), so that one root cause is named once.
    """
    if evidence.shape != "aci":
        return _not_applicable(evidence.shape), None
    raw = evidence.raw
    nested = _mapping(raw.get("attestation"))
    keyset = _mapping(nested.get("workload_keyset"))
    custody = _mapping(_mapping(nested.get("evidence")).get("key_custody"))
    state = _State(dependent_enforced=not replay_enforced)
    results = [_digest(raw, keyset, state), _membership(evidence, keyset)]
    results.append(_endorsement(raw, nested, keyset, state))
    results.append(_app_key(evidence, keyset, custody, state))
    app_id_result = _app_id(evidence, quote, quote_failure, keyset, app_ids, state)
    results.append(_kms_root(evidence, custody, kms_roots, state))
    results.append(app_id_result)
    results.append(_expiry(keyset, now))
    return results, _facts(raw, nested, keyset, state)


def _digest(raw: Mapping[str, Any], keyset: Mapping[str, Any], state: _State) -> CheckResult:
    stated = raw.get("workload_keyset_digest")
    try:
        computed = jcs_digest(canonical_keyset(keyset))
    except _MalformedError as exc:
        return _result(KEYSET_DIGEST, False, f"workload_keyset: {exc}")
    if not isinstance(stated, str) or stated.strip().lower() != computed:
        shown = stated[:80] if isinstance(stated, str) else "missing"
        return _result(KEYSET_DIGEST, False, f"computed {computed}, stated {shown}")
    state.digest = computed
    return _result(KEYSET_DIGEST, True, f"{computed} = sha256 of the RFC 8785 canonical keyset")


def _membership(evidence: Evidence, keyset: Mapping[str, Any]) -> CheckResult:
    key = evidence.signing_public_key
    if key is None:
        return _result(KEYSET_MEMBERSHIP, False, "not evaluated: signing_key_valid failed", False)
    entries = keyset.get("e2ee_public_keys")
    for entry in entries if isinstance(entries, list) else []:
        item = _mapping(entry)
        text = item.get("public_key")
        if isinstance(text, str) and _key_bytes(text) == key:
            return _result(KEYSET_MEMBERSHIP, True, f"the key is e2ee key {item.get('key_id')!r}")
    return _result(KEYSET_MEMBERSHIP, False, "the key bound in REPORTDATA is not in the keyset")


def _endorsement(
    raw: Mapping[str, Any],
    nested: Mapping[str, Any],
    keyset: Mapping[str, Any],
    state: _State,
) -> CheckResult:
    if state.digest is None:
        return _result(KEYSET_ENDORSEMENT, False, "not evaluated: keyset_digest failed", False)
    public = _mapping(_mapping(keyset.get("workload_identity")).get("public_key"))
    algo, key_text = public.get("algo"), public.get("public_key")
    endorsement = _mapping(nested.get("keyset_endorsement"))
    value = endorsement.get("value")
    if not isinstance(key_text, str) or not isinstance(value, str):
        return _result(KEYSET_ENDORSEMENT, False, "no identity key or no endorsement value")
    if endorsement.get("algo") != algo:
        detail = f"endorsement algo {endorsement.get('algo')!r} is not the identity's {algo!r}"
        return _result(KEYSET_ENDORSEMENT, False, detail)
    payload = rfc8785.dumps(
        {"purpose": ENDORSEMENT_PURPOSE, "workload_keyset_digest": state.digest}
    )
    try:
        signature = bytes.fromhex(value)
    except ValueError:
        return _result(KEYSET_ENDORSEMENT, False, "the endorsement is not hex")
    if algo in _SECP256K1_ALGOS:
        valid = _verify_secp256k1(key_text, payload, signature)
    elif algo == "ed25519":
        valid = _verify_ed25519(key_text, payload, signature)
    else:
        return _result(KEYSET_ENDORSEMENT, False, f"identity key algo {str(algo)[:40]!r} unknown")
    if not valid:
        return _result(KEYSET_ENDORSEMENT, False, "the identity key's endorsement does not verify")
    try:
        workload_id = jcs_digest({"algo": algo, "public_key": key_text})
    except _MalformedError as exc:
        return _result(KEYSET_ENDORSEMENT, False, f"workload_id: {exc}")
    stated = raw.get("workload_id")
    if not isinstance(stated, str) or stated.strip().lower() != workload_id:
        return _result(KEYSET_ENDORSEMENT, False, f"workload_id is not {workload_id}")
    return _result(KEYSET_ENDORSEMENT, True, f"identity key ({algo}) endorses the keyset")


def _custody_entry(custody: Mapping[str, Any], key: bytes, role_prefix: str) -> Mapping[str, Any]:
    keys = custody.get("keys")
    for entry in keys if isinstance(keys, list) else []:
        item = _mapping(entry)
        role, text = item.get("role"), item.get("public_key")
        if (
            isinstance(role, str)
            and role.startswith(role_prefix)
            and isinstance(text, str)
            and _key_bytes(text) == key
        ):
            return item
    raise _MalformedError(f"no {role_prefix} custody entry for the key")


def _chain_link(entry: Mapping[str, Any], index: int) -> str:
    chain = entry.get("signature_chain")
    if not isinstance(chain, list) or len(chain) != 2 or not isinstance(chain[index], str):
        raise _MalformedError("the signature_chain is not two hex signatures")
    value: str = chain[index]
    return value


def _app_key_of(entry: Mapping[str, Any], key: bytes) -> PublicKey:
    purpose = entry.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise _MalformedError("the custody entry has no purpose")
    compressed = PublicKey(key).format(compressed=True).hex()
    return recover(f"{purpose}:{compressed}".encode(), _chain_link(entry, 0))


def _app_key(
    evidence: Evidence,
    keyset: Mapping[str, Any],
    custody: Mapping[str, Any],
    state: _State,
) -> CheckResult:
    key = evidence.signing_public_key
    if key is None:
        return _result(CUSTODY_APP_KEY, False, "not evaluated: signing_key_valid failed", False)
    if custody.get("provider") != CUSTODY_PROVIDER:
        shown = str(custody.get("provider"))[:40]
        return _result(CUSTODY_APP_KEY, False, f"key custody provider {shown!r}, not dstack-kms")
    identity_text = _mapping(_mapping(keyset.get("workload_identity")).get("public_key")).get(
        "public_key"
    )
    identity = _key_bytes(identity_text) if isinstance(identity_text, str) else None
    try:
        app_key = _app_key_of(_custody_entry(custody, key, "e2ee"), key)
        if identity is None:
            raise _MalformedError("the keyset's identity key is not a secp256k1 key")
        identity_app = _app_key_of(_custody_entry(custody, identity, "identity"), identity)
    except _MalformedError as exc:
        return _result(CUSTODY_APP_KEY, False, str(exc))
    if app_key.format() != identity_app.format():
        detail = "the E2EE key and the identity key recover different app keys"
        return _result(CUSTODY_APP_KEY, False, detail)
    state.app_key = app_key
    shown = app_key.format(compressed=True).hex()
    return _result(CUSTODY_APP_KEY, True, f"app key {shown} signs the E2EE and identity keys")


def _kms_root(
    evidence: Evidence,
    custody: Mapping[str, Any],
    accepted: frozenset[str],
    state: _State,
) -> CheckResult:
    if state.app_key is None:
        return _result(CUSTODY_KMS_ROOT, False, "not evaluated: custody_app_key failed", False)
    if state.app_id is None:
        detail = "not evaluated: no authenticated app id"
        return _result(CUSTODY_KMS_ROOT, False, detail, state.dependent_enforced)
    key = evidence.signing_public_key
    assert key is not None
    message = KMS_ISSUED_PREFIX + state.app_id + state.app_key.format(compressed=True)
    try:
        root = recover(message, _chain_link(_custody_entry(custody, key, "e2ee"), 1))
    except _MalformedError as exc:
        return _result(CUSTODY_KMS_ROOT, False, str(exc))
    shown = root.format(compressed=True).hex()
    state.kms_root = shown
    if shown not in accepted:
        detail = (
            f"KMS root {shown} is not an accepted dstack KMS root ({len(accepted)} accepted); "
            "after checking it, add it to attestation.gateway_kms_roots"
        )
        return _result(CUSTODY_KMS_ROOT, False, detail)
    return _result(CUSTODY_KMS_ROOT, True, f"KMS root {shown} issued the app key for this app id")


def _replayed_app_id(evidence: Evidence, quote: TdxQuote) -> bytes:
    log = parse_event_log(evidence.event_log, "attestation.evidence.event_log")
    replayed = replay(log.events)
    if any(replayed[i] != quote.report.rtmrs[i] for i in range(4)):
        raise EventLogError("the event log does not replay to the quote")
    value = runtime_claim(log.events, "app-id")
    if value is None or len(value) != 20:
        raise EventLogError("no 20-byte app-id event in RTMR3")
    return value


def _app_id(
    evidence: Evidence,
    quote: TdxQuote | None,
    quote_failure: str,
    keyset: Mapping[str, Any],
    accepted: frozenset[str],
    state: _State,
) -> CheckResult:
    if quote is None:
        return _result(GATEWAY_APP_ID, False, f"not evaluated: {quote_failure} failed", False)
    try:
        app_id = _replayed_app_id(evidence, quote)
    except EventLogError as exc:
        detail = f"not evaluated: no authenticated app id ({exc})"
        return _result(GATEWAY_APP_ID, False, detail, state.dependent_enforced)
    state.app_id = app_id
    shown = app_id.hex()
    subject = _mapping(keyset.get("workload_identity")).get("subject")
    if isinstance(subject, str) and shown not in subject.lower():
        return _result(GATEWAY_APP_ID, False, f"keyset subject {subject[:80]!r} is not app {shown}")
    if shown not in accepted:
        detail = (
            f"app id {shown} (RTMR3 app-id event) is not an accepted gateway app "
            f"({len(accepted)} accepted); after checking it, add it to "
            "attestation.gateway_app_ids"
        )
        return _result(GATEWAY_APP_ID, False, detail)
    return _result(GATEWAY_APP_ID, True, f"app id {shown} (RTMR3 app-id event) is accepted")


def _expiry(keyset: Mapping[str, Any], now: int) -> CheckResult:
    epoch = _mapping(keyset.get("keyset_epoch"))
    not_after = epoch.get("not_after")
    if isinstance(not_after, bool) or not isinstance(not_after, int):
        return _result(KEYSET_EXPIRY, None, "the keyset states no not_after", False)
    ok = now < not_after
    state = "valid until" if ok else "EXPIRED at"
    detail = f"keyset {state} {not_after} (now {now}); advisory: not_after is not hardware-bound"
    return _result(KEYSET_EXPIRY, ok, detail, False)


def _facts(
    raw: Mapping[str, Any],
    nested: Mapping[str, Any],
    keyset: Mapping[str, Any],
    state: _State,
) -> GatewayFacts:
    epoch = _mapping(keyset.get("keyset_epoch"))
    downstream = _mapping(_mapping(nested.get("evidence")).get("downstream_tls_binding"))
    provenance = _mapping(nested.get("source_provenance"))
    domain = downstream.get("domain")
    source = provenance.get("repo_url")
    commit = provenance.get("repo_commit")
    version, not_after = epoch.get("version"), epoch.get("not_after")
    workload_id = raw.get("workload_id")
    return GatewayFacts(
        app_id=state.app_id.hex() if state.app_id is not None else None,
        kms_root=state.kms_root,
        app_key=state.app_key.format(compressed=True).hex() if state.app_key else None,
        keyset_version=version if isinstance(version, int) else None,
        keyset_not_after=not_after if isinstance(not_after, int) else None,
        workload_id=workload_id if isinstance(workload_id, str) else None,
        downstream_tls=str(domain)[:200] if isinstance(domain, str) else None,
        source=f"{source}@{commit}"[:300] if isinstance(source, str) else None,
    )
