"""The simulated CVM's measurements: a dstack-like event log, RTMRs replayed from it, the app
compose and its hash, mr_td, vm_config. Pure and deterministic for a given (model, instance seed).

Event log entry (the JSON shape NEAR and dstack emit)::

    {"imr": 0..3, "event_type": u32, "digest": 96 hex (sha384), "event": str,
     "event_payload": hex}

- Boot events (imr 0..2) carry labelled filler payloads; their digest is ``sha384(payload)``.
- Runtime events (imr 3, event_type 0x08000001) follow dstack's rule
  ``digest = sha384(u32le(event_type) || ":" || event || ":" || payload)``, so a verifier can
  check that the ``compose-hash`` event's payload is the compose hash and re-derive the digest.
- RTMR replay: ``acc = 48 zero bytes; acc = sha384(acc || digest)`` for each event of that imr,
  in order. The quote's RTMRs are exactly the replay of the emitted log.

The values model a production image (``vm_config.image`` is not a ``-dev`` image). Deliberately
not modelled: mr_td/rtmr0..2 derivation from a real OVMF/kernel, the KMS, the app certificate.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
IMAGE_NAME = "dstack-nvidia-0.5.5"
_IMR_COUNT = 4
_MEASUREMENT_BYTES = 48


@dataclass(frozen=True, slots=True)
class Event:
    """One event log entry."""

    imr: int
    event_type: int
    digest: bytes
    event: str
    event_payload: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "imr": self.imr,
            "event_type": self.event_type,
            "digest": self.digest.hex(),
            "event": self.event,
            "event_payload": self.event_payload.hex(),
        }


def boot_event(imr: int, event_type: int, payload: bytes) -> Event:
    """A firmware/boot event measured as ``sha384(payload)``."""
    return Event(imr, event_type, hashlib.sha384(payload).digest(), "", payload)


def runtime_event(name: str, payload: bytes) -> Event:
    """A dstack runtime event extended into RTMR3."""
    digest = hashlib.sha384(
        struct.pack("<I", DSTACK_RUNTIME_EVENT_TYPE) + b":" + name.encode() + b":" + payload
    ).digest()
    return Event(3, DSTACK_RUNTIME_EVENT_TYPE, digest, name, payload)


def replay_rtmrs(events: Iterable[Event | Mapping[str, Any]]) -> tuple[bytes, bytes, bytes, bytes]:
    """Replay an event log (objects or their JSON dicts) into RTMR0..3."""
    acc = [bytes(_MEASUREMENT_BYTES)] * _IMR_COUNT
    for item in events:
        if isinstance(item, Event):
            imr, digest = item.imr, item.digest
        else:
            imr, digest = int(item["imr"]), bytes.fromhex(str(item["digest"]))
        acc[imr] = hashlib.sha384(acc[imr] + digest).digest()
    return acc[0], acc[1], acc[2], acc[3]


def _h(label: str, size: int = 32) -> bytes:
    return hashlib.sha384(b"venice-simulator:" + label.encode()).digest()[:size]


@dataclass(frozen=True, slots=True)
class Measurements:
    """Everything the attestation says about the simulated CVM's software."""

    app_compose: str
    compose_hash: bytes
    mr_td: bytes
    os_image_hash: bytes
    app_id: bytes
    instance_id: bytes
    device_id: bytes
    key_provider_info: str
    vm_config: str
    event_log: tuple[Event, ...]
    rtmrs: tuple[bytes, bytes, bytes, bytes]

    @property
    def mr_aggregated(self) -> bytes:
        return hashlib.sha256(self.mr_td + b"".join(self.rtmrs)).digest()

    def event_log_json(self) -> list[dict[str, Any]]:
        return [event.to_json() for event in self.event_log]

    def tcb_info(self) -> dict[str, Any]:
        """dstack's ``info.tcb_info`` object."""
        return {
            "app_compose": self.app_compose,
            "compose_hash": self.compose_hash.hex(),
            "device_id": self.device_id.hex(),
            "event_log": self.event_log_json(),
            "mrtd": self.mr_td.hex(),
            "os_image_hash": self.os_image_hash.hex(),
            "rtmr0": self.rtmrs[0].hex(),
            "rtmr1": self.rtmrs[1].hex(),
            "rtmr2": self.rtmrs[2].hex(),
            "rtmr3": self.rtmrs[3].hex(),
        }


SIMULATED_IMAGE_DIGEST = hashlib.sha256(b"venice-simulator image").hexdigest()
SIMULATED_MR_TD = _h("mr-td " + IMAGE_NAME, _MEASUREMENT_BYTES)


def app_compose_for(upstream_model: str) -> str:
    """The dstack app compose (a JSON document, pretty-printed as dstack stores it)."""
    compose_file = (
        "services:\n"
        "  inference-proxy:\n"
        f"    image: venice-e2ee-proxy/simulator@sha256:{SIMULATED_IMAGE_DIGEST}\n"
        "    environment:\n"
        f"      - MODEL_NAME={upstream_model}\n"
    )
    document = {
        "manifest_version": 2,
        "name": "venice-simulator",
        "runner": "docker-compose",
        "docker_compose_file": compose_file,
        "kms_enabled": True,
        "gateway_enabled": False,
        "local_key_provider_enabled": False,
        "key_provider_id": "",
        "public_logs": True,
        "public_sysinfo": True,
        "allowed_envs": [],
        "no_instance_id": False,
        "secure_time": False,
    }
    return json.dumps(document, indent=4)


def _boot_events() -> list[Event]:
    # Event types as seen in real dstack logs (EV_EFI_* 0x8000000x, EV_SEPARATOR 4, ...).
    return [
        boot_event(0, 0x8000000B, _h("td-hob")),
        boot_event(0, 0x8000000A, _h("cfv-image")),
        boot_event(0, 0x80000001, _h("secure-boot")),
        boot_event(0, 0x80000001, _h("pk")),
        boot_event(0, 0x80000001, _h("kek")),
        boot_event(0, 4, bytes(4)),
        boot_event(0, 10, b"ACPI DATA"),
        boot_event(1, 0x80000003, _h("kernel-image")),
        boot_event(1, 0x80000007, b"Calling EFI Application from Boot Option"),
        boot_event(1, 4, bytes(4)),
        boot_event(2, 6, _h("kernel-cmdline")),
        boot_event(2, 6, _h("initrd")),
        boot_event(1, 0x80000007, b"Exit Boot Services Invocation"),
    ]


@lru_cache(maxsize=64)
def build_measurements(upstream_model: str, instance_seed: int) -> Measurements:
    """The measurements of the CVM serving ``upstream_model`` (instance ids from the seed)."""
    app_compose = app_compose_for(upstream_model)
    compose_hash = hashlib.sha256(app_compose.encode()).digest()
    os_image_hash = _h("os-image " + IMAGE_NAME)
    app_id = _h("app-id " + upstream_model, 20)
    instance_id = _h(f"instance-id {upstream_model} {instance_seed}", 20)
    device_id = _h(f"device-id {instance_seed}")
    key_provider_info = json.dumps(
        {"name": "kms", "id": _h("kms-root-key", 32).hex()}, separators=(",", ":")
    )
    vm_config = json.dumps(
        {
            "spec_version": 1,
            "os_image_hash": os_image_hash.hex(),
            "cpu_count": 16,
            "memory_size": 68719476736,
            "qemu_version": "9.2.1",
            "pci_hole64_size": 1125899906842624,
            "hugepages": False,
            "num_gpus": 1,
            "num_nvswitches": 0,
            "hotplug_off": True,
            "image": IMAGE_NAME,
        },
        separators=(",", ":"),
    )
    events = [
        *_boot_events(),
        runtime_event("system-preparing", b""),
        runtime_event("app-id", app_id),
        runtime_event("compose-hash", compose_hash),
        runtime_event("instance-id", instance_id),
        runtime_event("boot-mr-done", b""),
        runtime_event("mr-kms", _h("mr-kms")),
        runtime_event("os-image-hash", os_image_hash),
        runtime_event("key-provider", key_provider_info.encode()),
        runtime_event("storage-fs", b"zfs"),
        runtime_event("system-ready", b""),
    ]
    return Measurements(
        app_compose=app_compose,
        compose_hash=compose_hash,
        mr_td=SIMULATED_MR_TD,
        os_image_hash=os_image_hash,
        app_id=app_id,
        instance_id=instance_id,
        device_id=device_id,
        key_provider_info=key_provider_info,
        vm_config=vm_config,
        event_log=tuple(events),
        rtmrs=replay_rtmrs(events),
    )
