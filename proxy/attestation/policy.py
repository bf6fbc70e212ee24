"""What a caller requires of an attestation: DCAP, the GPU check, TCB states, software identity.

The values mirror the ``[attestation]`` settings. Unknown values fall through to the strictest
behaviour (any ``dcap`` other than ``"off"`` requires DCAP; any ``nvidia`` other than ``"off"``
enforces the GPU nonce; any ``software`` other than ``"off"`` enforces the software checks), so
a typo cannot switch a check off.

``software`` governs ``event_log_replay``, ``compose_hash_binding`` and ``os_image_not_dev``:
with ``"require"`` they are enforced and a report that lacks their input (no event log, no
compose hash, no vm_config) fails closed; with ``"off"`` they are computed but informational.
``allow_dev_image`` keeps ``os_image_not_dev`` informational only: several real Venice ``-p``
backends run dstack **dev** images, whose guests accept operator logins.

``gateway_models`` (``"refuse"``, default, or ``"allow"``) decides whether a report that
attests only a gateway (:mod:`.trust`) may be used; ``trust_levels`` pins a model's expected
level from the config (``"gateway"`` also accepts gateway trust for that one model).
``allow_unpinned_images`` keeps ``compose_images_pinned`` informational. ``extra_mrseam`` and
``extra_mrtd`` extend the shipped measurement policy (:mod:`.measurements`);
``gateway_kms_roots`` and ``gateway_app_ids``, when not empty, replace its gateway anchors.

``pins`` maps a model id (the id the client asks for, e.g. ``e2ee-glm-5-1``) to
:class:`MeasurementPins`: allowed lowercase-hex values per measurement. An empty tuple leaves
that measurement unpinned. Pins are validated when built: wrong length or non-hex raises
``ValueError`` so a typo in a config file is caught at start-up, not at the first request.

Deliberately NOT here: the NRAS round trip and collateral fetching (I/O, the caller's job).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final, Literal

DcapMode = Literal["require", "off"]
NvidiaMode = Literal["off", "nonce", "nras"]
SoftwareMode = Literal["require", "off"]
GatewayMode = Literal["refuse", "allow"]
TrustLevel = Literal["enclave", "gateway"]
TRUST_LEVELS: Final = ("enclave", "gateway")

TCB_STATUS_REVOKED = "Revoked"
KNOWN_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        TCB_STATUS_REVOKED,
    }
)
DEFAULT_ALLOWED_TCB_STATUS = frozenset({"UpToDate", "SWHardeningNeeded"})

# Hex digits per pinned measurement: TDX registers are SHA-384, dstack hashes are SHA-256.
PIN_HEX_LENGTHS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "mrtd": 96,
        "rtmr0": 96,
        "rtmr1": 96,
        "rtmr2": 96,
        "compose_hash": 64,
        "os_image_hash": 64,
    }
)
_HEX_DIGITS = frozenset("0123456789abcdef")


def _normalized_pins(name: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"pins.{name} must be a list of hex strings, not one string")
    length = PIN_HEX_LENGTHS[name]
    normalized: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"pins.{name} holds a non-string value")
        text = value.strip().lower().removeprefix("0x")
        if len(text) != length or not _HEX_DIGITS.issuperset(text):
            raise ValueError(f"pins.{name} values must be {length} hex digits")
        normalized.append(text)
    return tuple(normalized)


@dataclass(frozen=True, slots=True)
class MeasurementPins:
    """Allowed values per measurement for one model; an empty tuple means "not pinned"."""

    mrtd: tuple[str, ...] = ()
    rtmr0: tuple[str, ...] = ()
    rtmr1: tuple[str, ...] = ()
    rtmr2: tuple[str, ...] = ()
    compose_hash: tuple[str, ...] = ()
    os_image_hash: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in PIN_HEX_LENGTHS:
            object.__setattr__(self, name, _normalized_pins(name, getattr(self, name)))

    def pinned(self) -> dict[str, tuple[str, ...]]:
        """The pinned measurements (name -> allowed values), in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """Which checks are enforced. ``Revoked`` is never accepted, even when listed."""

    dcap: DcapMode = "require"
    nvidia: NvidiaMode = "nonce"
    allowed_tcb_status: frozenset[str] = field(default=DEFAULT_ALLOWED_TCB_STATUS)
    software: SoftwareMode = "require"
    allow_dev_image: bool = False
    pins: Mapping[str, MeasurementPins] = field(default_factory=dict, hash=False)
    gateway_models: GatewayMode = "refuse"
    trust_levels: Mapping[str, TrustLevel] = field(default_factory=dict, hash=False)
    allow_unpinned_images: bool = False
    extra_mrseam: frozenset[str] = frozenset()
    extra_mrtd: frozenset[str] = frozenset()
    gateway_kms_roots: frozenset[str] = frozenset()
    gateway_app_ids: frozenset[str] = frozenset()

    def tcb_status_allowed(self, status: str) -> bool:
        """True when a DCAP TCB status is acceptable under this policy."""
        return status != TCB_STATUS_REVOKED and status in self.allowed_tcb_status

    @property
    def software_enforced(self) -> bool:
        """True unless the software checks are explicitly off."""
        return self.software != "off"

    def pins_for(self, model: str) -> MeasurementPins | None:
        """The pins for ``model`` when at least one measurement is pinned, else None."""
        pins = self.pins.get(model)
        return pins if pins is not None and pins.pinned() else None
