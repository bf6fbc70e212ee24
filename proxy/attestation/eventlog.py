"""dstack/TDX event logs: parse the entries, derive runtime-event digests, replay into RTMRs.

Entry wire format (JSON; NEAR lists, Phala/aci JSON strings of the same list)::

    {"imr": 0..3, "event_type": u32, "digest": 96 hex (SHA-384) or "", "event": str,
     "event_payload": hex}

Where the logs are: NEAR has ``event_log`` at the top and a copy in ``info.tcb_info.event_log``;
Phala legacy has ``event_log`` (a JSON string) and ``info.tcb_info.event_log``; aci has
``attestation.evidence.event_log`` (surfaced as :attr:`Evidence.event_log`). Every log present
must replay: two logs that disagree mean a garbled (or doctored) report.

Replay (docs/protocol.md#event-log): per IMR, ``acc = 48 zero bytes; acc = sha384(acc || digest)``
for each event of that IMR in order; the results must equal RTMR0..3 of the quote.

dstack runtime events (``event_type`` 0x08000001, extended into RTMR3 by the guest) have a
digest defined by their content: ``sha384(u32le(event_type) || ":" || event || ":" ||
payload)``. A stated digest must equal it; an empty one (Phala's top-level log omits them) is
replaced by it. That is what makes a runtime event's *payload* (the compose hash, the OS image
hash) bound by the quote, not just its digest.

Claims (:func:`runtime_claim`): a named runtime event's payload, accepted only when the name
occurs exactly once and before its boundary event when that is present (``compose-hash``
before ``boot-mr-done``, ``os-image-hash`` before ``system-ready``), because code running in
the CVM after boot can append more measured events, but cannot remove the genuine one.

Deliberately NOT checked: the payloads of boot events (IMR 0-2; their digests are over UEFI
structures that are not reproducible from the JSON), and the meaning of any event other than
the claims read by :mod:`.software`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

DSTACK_RUNTIME_EVENT_TYPE: Final = 0x08000001
IMR_COUNT: Final = 4
DIGEST_BYTES: Final = 48

CLAIM_BOUNDARIES: Final[Mapping[str, str]] = {
    "compose-hash": "boot-mr-done",
    "app-id": "boot-mr-done",
    "instance-id": "boot-mr-done",
    "os-image-hash": "system-ready",
}


class EventLogError(ValueError):
    """An event log that cannot be replayed. The message names the entry, never its payload."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event, with the digest that is extended into its IMR."""

    imr: int
    event_type: int
    digest: bytes
    event: str
    payload: bytes = field(repr=False)

    @property
    def is_runtime(self) -> bool:
        return self.event_type == DSTACK_RUNTIME_EVENT_TYPE


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed log and where it came from (for reports)."""

    source: str
    events: tuple[Event, ...]


def runtime_digest(event_type: int, name: str, payload: bytes) -> bytes:
    """dstack's digest of a runtime event."""
    message = struct.pack("<I", event_type) + b":" + name.encode("utf-8") + b":" + payload
    return hashlib.sha384(message).digest()


def _hex_bytes(value: Any, index: int, name: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise EventLogError(f"event {index}: {name} is not a string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise EventLogError(f"event {index}: {name} is not hex") from exc


def _int(value: Any, index: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventLogError(f"event {index}: {name} is not an integer")
    return value


def parse_event(entry: Any, index: int) -> Event:
    """One JSON entry -> :class:`Event`, with runtime digests derived and checked."""
    if not isinstance(entry, Mapping):
        raise EventLogError(f"event {index} is not an object")
    imr = _int(entry.get("imr"), index, "imr")
    if not 0 <= imr < IMR_COUNT:
        raise EventLogError(f"event {index}: imr {imr} is not 0..3")
    event_type = _int(entry.get("event_type"), index, "event_type")
    name = entry.get("event", "")
    if not isinstance(name, str):
        raise EventLogError(f"event {index}: event name is not a string")
    payload = _hex_bytes(entry.get("event_payload"), index, "event_payload")
    stated = _hex_bytes(entry.get("digest"), index, "digest")
    if event_type == DSTACK_RUNTIME_EVENT_TYPE:
        derived = runtime_digest(event_type, name, payload)
        if stated and stated != derived:
            raise EventLogError(
                f"event {index} ({name!r}): digest does not match its type, name and payload"
            )
        stated = derived
    if len(stated) != DIGEST_BYTES:
        raise EventLogError(f"event {index}: digest is {len(stated)} bytes, not 48")
    return Event(imr=imr, event_type=event_type, digest=stated, event=name, payload=payload)


def parse_event_log(value: Any, source: str) -> EventLog:
    """A list of entries, or a JSON string holding one -> :class:`EventLog`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise EventLogError(f"{source} is not valid JSON") from exc
    if not isinstance(value, list):
        raise EventLogError(f"{source} is not a list")
    return EventLog(source, tuple(parse_event(entry, index) for index, entry in enumerate(value)))


def replay(events: Sequence[Event]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the events extend them from zero."""
    acc = [bytes(DIGEST_BYTES)] * IMR_COUNT
    for event in events:
        acc[event.imr] = hashlib.sha384(acc[event.imr] + event.digest).digest()
    return acc[0], acc[1], acc[2], acc[3]


def runtime_claim(events: Sequence[Event], name: str) -> bytes | None:
    """The payload of the unique runtime event ``name`` (before its boundary), else None.

    Raises :class:`EventLogError` when the name occurs more than once or after its boundary.
    """
    runtime = [event for event in events if event.is_runtime]
    positions = [index for index, event in enumerate(runtime) if event.event == name]
    if not positions:
        return None
    if len(positions) > 1:
        raise EventLogError(f"the runtime event {name!r} occurs {len(positions)} times")
    boundary = CLAIM_BOUNDARIES.get(name)
    boundary_positions = [i for i, event in enumerate(runtime) if event.event == boundary]
    if boundary_positions and positions[0] > boundary_positions[0]:
        raise EventLogError(f"the runtime event {name!r} comes after {boundary!r}")
    return runtime[positions[0]].payload
