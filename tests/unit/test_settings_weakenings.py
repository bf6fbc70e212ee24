"""The loud warnings: every setting that weakens what an attestation proves names itself."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.settings import load_settings, weakenings

MRSEAM = "ab" * 48
KMS_ROOT = "02" + "cd" * 32
APP_ID = "ef" * 20

# (attestation settings, signatures.mode, the warnings: (log event, what it says)) in the order
# they are given.
ALONE: list[tuple[dict[str, Any], str, list[tuple[str, str]]]] = [
    (
        {"dcap": "off"},
        "async",
        [
            (
                "dcap_off",
                "WEAKENED: attestation.dcap = off: TDX quote signatures are NOT verified, so any "
                "machine can pose as an enclave",
            )
        ],
    ),
    (
        {"nvidia": "nonce"},
        "async",
        [
            (
                "nras_off",
                "WEAKENED: attestation.nvidia = nonce: GPU evidence is NOT verified by NVIDIA NRAS",
            )
        ],
    ),
    (
        {"nvidia": "off"},
        "async",
        [("nvidia_off", "WEAKENED: attestation.nvidia = off: GPU evidence is NOT checked at all")],
    ),
    (
        {"software": "off"},
        "async",
        [
            (
                "software_off",
                "WEAKENED: attestation.software = off: event-log replay, compose binding, "
                "dev-image and pinned-image checks only inform",
            )
        ],
    ),
    (
        {"allow_dev_image": True},
        "async",
        [
            (
                "dev_images_allowed",
                "WEAKENED: attestation.allow_dev_image = true: dstack dev images (operator login "
                "possible) are accepted",
            )
        ],
    ),
    (
        {"allow_unpinned_images": True},
        "async",
        [
            (
                "unpinned_images_allowed",
                "WEAKENED: attestation.allow_unpinned_images = true: a compose whose images are "
                "not pinned by digest is accepted",
            )
        ],
    ),
    (
        {"allowed_tcb_status": ["UpToDate", "OutOfDate", "ConfigurationNeeded"]},
        "async",
        [
            (
                "tcb_status_weakened",
                "WEAKENED: attestation.allowed_tcb_status accepts ConfigurationNeeded, OutOfDate: "
                "platforms with known unpatched TCB issues are accepted",
            )
        ],
    ),
    (
        {"gateway_models": "allow"},
        "async",
        [
            (
                "gateway_models_allowed",
                'WEAKENED: attestation.gateway_models = "allow": models whose attestation covers '
                "only Venice's gateway (not the host that reads the prompt) are used",
            )
        ],
    ),
    (
        {"trust_levels": {"m-z": "gateway", "m-e": "enclave", "m-a": "gateway"}},
        "async",
        [
            (
                "gateway_trust_accepted",
                "WEAKENED: attestation.trust_levels accepts gateway trust for m-a, m-z",
            )
        ],
    ),
    (
        {"extra_mrseam": [MRSEAM, "cd" * 48]},
        "async",
        [
            (
                "measurement_policy_extended",
                "WEAKENED: attestation.extra_mrseam/extra_mrtd accept 2 TDX module and 0 firmware "
                "values beyond the shipped policy",
            )
        ],
    ),
    (
        {"extra_mrtd": [MRSEAM]},
        "async",
        [
            (
                "measurement_policy_extended",
                "WEAKENED: attestation.extra_mrseam/extra_mrtd accept 0 TDX module and 1 firmware "
                "values beyond the shipped policy",
            )
        ],
    ),
    (
        {"gateway_kms_roots": [KMS_ROOT]},
        "async",
        [
            (
                "gateway_anchors_replaced",
                "WEAKENED: attestation.gateway_kms_roots/gateway_app_ids replace the shipped "
                "gateway anchors",
            )
        ],
    ),
    (
        {"gateway_app_ids": [APP_ID]},
        "async",
        [
            (
                "gateway_anchors_replaced",
                "WEAKENED: attestation.gateway_kms_roots/gateway_app_ids replace the shipped "
                "gateway anchors",
            )
        ],
    ),
    (
        {},
        "off",
        [
            (
                "signatures_off",
                "WEAKENED: signatures.mode = off: answers' enclave signatures are not checked",
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("attestation", "signatures", "expected"), ALONE, ids=[e[2][0][0] for e in ALONE]
)
def test_each_weakening_setting_alone_warns_and_names_itself(
    attestation: dict[str, Any], signatures: str, expected: list[tuple[str, str]]
) -> None:
    settings = load_settings(
        overrides={"attestation": attestation, "signatures": {"mode": signatures}}, environ={}
    )
    assert weakenings(settings) == expected


def test_the_defaults_and_the_strengthening_values_warn_of_nothing() -> None:
    assert weakenings(load_settings(environ={})) == []
    stronger = load_settings(
        overrides={
            "attestation": {
                "allowed_tcb_status": ["UpToDate"],
                "trust_levels": {"m": "enclave"},
                "pins": {"m": {"rtmr1": ["00" * 48]}},
            },
            "signatures": {"mode": "strict"},
        },
        environ={},
    )
    assert weakenings(stronger) == []


def test_trust_state_in_memory_warns_only_when_said_so() -> None:
    settings = load_settings(environ={})
    assert weakenings(settings, state_persisted=True) == []
    assert weakenings(settings, state_persisted=False) == [
        (
            "trust_state_in_memory",
            "WEAKENED: trust levels are remembered in memory only (attestation.state_dir is not "
            "writable): a downgrade from enclave to gateway across restarts is not caught",
        )
    ]


def test_every_weakening_at_once_in_a_fixed_order() -> None:
    settings = load_settings(
        overrides={
            "attestation": {
                "dcap": "off",
                "nvidia": "off",
                "software": "off",
                "allow_dev_image": True,
                "allow_unpinned_images": True,
                "allowed_tcb_status": ["OutOfDate"],
                "gateway_models": "allow",
                "trust_levels": {"m": "gateway"},
                "extra_mrseam": [MRSEAM],
                "extra_mrtd": [MRSEAM, MRSEAM],
                "gateway_kms_roots": [KMS_ROOT],
                "gateway_app_ids": [APP_ID],
            },
            "signatures": {"mode": "off"},
        },
        environ={},
    )
    found = weakenings(settings, state_persisted=False)
    assert [event for event, _ in found] == [
        "dcap_off",
        "nvidia_off",
        "software_off",
        "dev_images_allowed",
        "unpinned_images_allowed",
        "tcb_status_weakened",
        "gateway_models_allowed",
        "gateway_trust_accepted",
        "measurement_policy_extended",
        "gateway_anchors_replaced",
        "trust_state_in_memory",
        "signatures_off",
    ]
    assert dict(found)["measurement_policy_extended"].endswith(
        "accept 1 TDX module and 2 firmware values beyond the shipped policy"
    )


@pytest.mark.parametrize(
    ("variable", "value", "event"),
    [
        ("VENICE_PROXY_ATTESTATION__DCAP", "off", "dcap_off"),
        ("VENICE_PROXY_ATTESTATION__NVIDIA", "nonce", "nras_off"),
        ("VENICE_PROXY_ATTESTATION__SOFTWARE", "off", "software_off"),
        ("VENICE_PROXY_ATTESTATION__ALLOW_DEV_IMAGE", "true", "dev_images_allowed"),
        ("VENICE_PROXY_ATTESTATION__ALLOW_UNPINNED_IMAGES", "true", "unpinned_images_allowed"),
        ("VENICE_PROXY_ATTESTATION__ALLOWED_TCB_STATUS", '["OutOfDate"]', "tcb_status_weakened"),
        ("VENICE_PROXY_ATTESTATION__GATEWAY_MODELS", "allow", "gateway_models_allowed"),
        ("VENICE_PROXY_ATTESTATION__TRUST_LEVELS", '{"m": "gateway"}', "gateway_trust_accepted"),
        ("VENICE_PROXY_ATTESTATION__EXTRA_MRTD", f'["{MRSEAM}"]', "measurement_policy_extended"),
        ("VENICE_PROXY_ATTESTATION__GATEWAY_APP_IDS", f'["{APP_ID}"]', "gateway_anchors_replaced"),
        ("VENICE_PROXY_SIGNATURES__MODE", "off", "signatures_off"),
    ],
)
def test_a_weakening_set_from_the_environment_warns(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, event: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert [found for found, _ in weakenings(load_settings(environ={}))] == [event]
