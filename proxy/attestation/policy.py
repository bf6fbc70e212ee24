"""What a caller requires of an attestation: DCAP on or off, the GPU check, allowed TCB states.

The values mirror the ``[attestation]`` settings. Unknown values fall through to the strictest
behaviour (any ``dcap`` other than ``"off"`` requires DCAP; any ``nvidia`` other than ``"off"``
enforces the GPU nonce), so a typo cannot switch a check off.

Deliberately NOT here: measurement pinning (a later tier) and the NRAS round trip (I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DcapMode = Literal["require", "off"]
NvidiaMode = Literal["off", "nonce", "nras"]

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


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """Which checks are enforced. ``Revoked`` is never accepted, even when listed."""

    dcap: DcapMode = "require"
    nvidia: NvidiaMode = "nonce"
    allowed_tcb_status: frozenset[str] = field(default=DEFAULT_ALLOWED_TCB_STATUS)

    def tcb_status_allowed(self, status: str) -> bool:
        """True when a DCAP TCB status is acceptable under this policy."""
        return status != TCB_STATUS_REVOKED and status in self.allowed_tcb_status
