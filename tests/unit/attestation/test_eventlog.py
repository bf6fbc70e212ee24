"""Event log parsing on hand-made entries: what each refusal says, and the runtime digest rules.

The real captures' logs are replayed in test_software.py.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest

from proxy.attestation.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    Event,
    EventLogError,
    parse_event,
    parse_event_log,
    runtime_claim,
    runtime_digest,
)

RUNTIME = DSTACK_RUNTIME_EVENT_TYPE
DIGEST = "ab" * 48


def refusal(entry: Any, index: int = 4) -> str:
    with pytest.raises(EventLogError) as info:
        parse_event(entry, index)
    return str(info.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x", "event 4 is not an object"),
        ({"event_type": 1, "digest": DIGEST}, "event 4: imr is not an integer"),
        ({"imr": "0", "event_type": 1, "digest": DIGEST}, "event 4: imr is not an integer"),
        ({"imr": 4, "event_type": 1, "digest": DIGEST}, "event 4: imr 4 is not 0..3"),
        ({"imr": -1, "event_type": 1, "digest": DIGEST}, "event 4: imr -1 is not 0..3"),
        ({"imr": 0, "digest": DIGEST}, "event 4: event_type is not an integer"),
        ({"imr": 0, "event_type": 1.0, "digest": DIGEST}, "event 4: event_type is not an integer"),
        ({"imr": 0, "event_type": 1, "event": 5}, "event 4: event name is not a string"),
        ({"imr": 0, "event_type": 1, "event_payload": 5}, "event 4: event_payload is not a string"),
        ({"imr": 0, "event_type": 1, "event_payload": "zz"}, "event 4: event_payload is not hex"),
        ({"imr": 0, "event_type": 1, "digest": 5}, "event 4: digest is not a string"),
        ({"imr": 0, "event_type": 1, "digest": "zz"}, "event 4: digest is not hex"),
        ({"imr": 0, "event_type": 1}, "event 4: digest is 0 bytes, not 48"),
        ({"imr": 0, "event_type": 1, "digest": None}, "event 4: digest is 0 bytes, not 48"),
        ({"imr": 0, "event_type": 1, "digest": "ab" * 47}, "event 4: digest is 47 bytes, not 48"),
        (
            {"imr": 3, "event_type": RUNTIME, "event": "app-id", "digest": DIGEST},
            "event 4 ('app-id'): digest does not match its type, name and payload",
        ),
    ],
)
def test_each_refusal_names_the_event_and_the_field(entry: Any, message: str) -> None:
    assert refusal(entry) == message


def test_imr_3_is_the_last_one() -> None:
    event = parse_event({"imr": 3, "event_type": 1, "digest": DIGEST}, 0)
    assert (event.imr, event.event_type, event.digest) == (3, 1, bytes.fromhex(DIGEST))


def test_a_runtime_event_without_name_or_payload_has_their_empty_digest() -> None:
    event = parse_event({"imr": 3, "event_type": RUNTIME}, 0)
    assert (event.event, event.payload) == ("", b"")
    assert event.digest == hashlib.sha384(struct.pack("<I", RUNTIME) + b"::").digest()
    assert event.is_runtime
    named = parse_event({"imr": 3, "event_type": RUNTIME, "event": "x", "event_payload": None}, 0)
    assert named.digest == hashlib.sha384(struct.pack("<I", RUNTIME) + b":x:").digest()


def test_a_stated_runtime_digest_that_matches_is_kept() -> None:
    digest = runtime_digest(RUNTIME, "app-id", b"\x01\x02")
    entry = {"imr": 3, "event_type": RUNTIME, "event": "app-id", "event_payload": "0102"}
    assert parse_event(entry | {"digest": digest.hex().upper()}, 0).digest == digest


def test_runtime_digest_packs_the_type_as_unsigned_32_bits() -> None:
    for event_type in (0, RUNTIME, 0x80000001, 0xFFFFFFFF):
        expected = hashlib.sha384(
            event_type.to_bytes(4, "little") + b":" + "é".encode() + b":\x00"
        ).digest()
        assert runtime_digest(event_type, "é", b"\x00") == expected


def test_a_boot_event_is_not_a_runtime_event() -> None:
    event = parse_event({"imr": 0, "event_type": 1, "event": "x", "digest": DIGEST}, 0)
    assert not event.is_runtime
    assert event.payload == b""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[", "event_log is not valid JSON"),
        ("{}", "event_log is not a list"),
        (5, "event_log is not a list"),
        (None, "event_log is not a list"),
        ("[" * 100_000, "event_log is not valid JSON"),
    ],
)
def test_a_log_that_is_not_a_list_names_its_source(value: Any, message: str) -> None:
    with pytest.raises(EventLogError) as info:
        parse_event_log(value, "event_log")
    assert str(info.value) == message


def test_an_entry_refusal_carries_its_position_in_the_log() -> None:
    good = {"imr": 0, "event_type": 1, "digest": DIGEST}
    with pytest.raises(EventLogError) as info:
        parse_event_log([good, good, {"imr": 9, "event_type": 1, "digest": DIGEST}], "tcb")
    assert str(info.value) == "event 2: imr 9 is not 0..3"
    log = parse_event_log('[{"imr": 1, "event_type": 1, "digest": "' + DIGEST + '"}]', "tcb")
    assert (log.source, [event.imr for event in log.events]) == ("tcb", [1])


def _runtime(name: str, payload: bytes = b"") -> Event:
    return Event(3, RUNTIME, runtime_digest(RUNTIME, name, payload), name, payload)


def test_claim_refusals_name_the_event_and_its_boundary() -> None:
    compose = _runtime("compose-hash", b"\x01")
    with pytest.raises(EventLogError) as info:
        runtime_claim([compose, compose, compose], "compose-hash")
    assert str(info.value) == "the runtime event 'compose-hash' occurs 3 times"
    with pytest.raises(EventLogError) as info:
        runtime_claim([_runtime("system-ready"), _runtime("os-image-hash")], "os-image-hash")
    assert str(info.value) == "the runtime event 'os-image-hash' comes after 'system-ready'"


def test_a_claim_without_a_boundary_or_before_it_is_read() -> None:
    image = _runtime("os-image-hash", b"\x07")
    assert runtime_claim([image], "os-image-hash") == b"\x07"
    assert runtime_claim([image, _runtime("system-ready")], "os-image-hash") == b"\x07"
    # a name without a boundary of its own, and boot events, are read as they are
    other = _runtime("custom", b"\x09")
    boot = Event(3, 1, bytes(48), "custom", b"\x08")
    assert runtime_claim([boot, other, _runtime("boot-mr-done")], "custom") == b"\x09"
