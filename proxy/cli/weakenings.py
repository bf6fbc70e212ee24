"""Settings that weaken what an attestation proves: listed once, logged loudly at start-up.

:func:`weakenings` is pure: settings in, ``(event, detail)`` pairs out, one per weakening, each
detail naming the setting and what stops being checked. ``serve`` logs every one as a warning
before it listens (and ``verify`` prints them), so a weaker trust level never passes silently.
"""

from __future__ import annotations

from proxy.attestation import DEFAULT_ALLOWED_TCB_STATUS
from proxy.settings import Settings


def weakenings(settings: Settings, *, state_persisted: bool = True) -> list[tuple[str, str]]:
    """Every weakening setting in ``settings``: ``(log event, what it means)``."""
    section = settings.attestation
    found: list[tuple[str, str]] = []

    def add(event: str, detail: str) -> None:
        found.append((event, "WEAKENED: " + detail))

    if section.dcap == "off":
        add(
            "dcap_off",
            "attestation.dcap = off: TDX quote signatures are NOT verified, so any machine "
            "can pose as an enclave",
        )
    if section.nvidia == "nonce":
        add("nras_off", "attestation.nvidia = nonce: GPU evidence is NOT verified by NVIDIA NRAS")
    elif section.nvidia == "off":
        add("nvidia_off", "attestation.nvidia = off: GPU evidence is NOT checked at all")
    if section.software == "off":
        add(
            "software_off",
            "attestation.software = off: event-log replay, compose binding, dev-image and "
            "pinned-image checks only inform",
        )
    if section.allow_dev_image:
        add(
            "dev_images_allowed",
            "attestation.allow_dev_image = true: dstack dev images (operator login possible) "
            "are accepted",
        )
    if section.allow_unpinned_images:
        add(
            "unpinned_images_allowed",
            "attestation.allow_unpinned_images = true: a compose whose images are not pinned "
            "by digest is accepted",
        )
    extra = sorted(set(section.allowed_tcb_status) - DEFAULT_ALLOWED_TCB_STATUS)
    if extra:
        add(
            "tcb_status_weakened",
            f"attestation.allowed_tcb_status accepts {', '.join(extra)}: platforms with known "
            "unpatched TCB issues are accepted",
        )
    if section.gateway_models == "allow":
        add(
            "gateway_models_allowed",
            'attestation.gateway_models = "allow": models whose attestation covers only '
            "Venice's gateway (not the host that reads the prompt) are used",
        )
    gateway_models = sorted(m for m, level in section.trust_levels.items() if level == "gateway")
    if gateway_models:
        add(
            "gateway_trust_accepted",
            f"attestation.trust_levels accepts gateway trust for {', '.join(gateway_models)}",
        )
    if section.extra_mrseam or section.extra_mrtd:
        add(
            "measurement_policy_extended",
            f"attestation.extra_mrseam/extra_mrtd accept {len(section.extra_mrseam)} TDX "
            f"module and {len(section.extra_mrtd)} firmware values beyond the shipped policy",
        )
    if section.gateway_kms_roots or section.gateway_app_ids:
        add(
            "gateway_anchors_replaced",
            "attestation.gateway_kms_roots/gateway_app_ids replace the shipped gateway anchors",
        )
    if not state_persisted:
        add(
            "trust_state_in_memory",
            "trust levels are remembered in memory only (attestation.state_dir is not "
            "writable): a downgrade from enclave to gateway across restarts is not caught",
        )
    if settings.signatures.mode == "off":
        add("signatures_off", "signatures.mode = off: answers' enclave signatures are not checked")
    return found
