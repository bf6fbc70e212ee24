"""The simulated CVM's measurements: the event rules, the RTMR replay, the event log's shape
against a real dstack capture, the app compose, vm_config, tcb_info, and known-answer values
(pure; the values are reproducible by design, so a verifier's pinned policy keeps matching)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.simulator.measurements import (
    DSTACK_RUNTIME_EVENT_TYPE,
    IMAGE_NAME,
    SIMULATED_IMAGE_DIGEST,
    SIMULATED_MR_TD,
    Event,
    Measurements,
    app_compose_for,
    boot_event,
    build_measurements,
    replay_rtmrs,
    runtime_event,
)
from tests.support.fixtures import FIXTURES_DIR

NEAR_UPSTREAM = "simulator/Simulated-NEAR-1B"


@pytest.fixture(autouse=True)
def fresh_measurements() -> Iterator[None]:
    """build_measurements is cached; each test builds its own (so what it checks is built now)."""
    build_measurements.cache_clear()
    yield
    build_measurements.cache_clear()


def real_capture() -> dict[str, Any]:
    path = FIXTURES_DIR / "attestations" / "attestation_glm_5_1.json"
    capture: dict[str, Any] = json.loads(path.read_text())["attestation"]
    return capture


def extend(acc: bytes, digest: bytes) -> bytes:
    return hashlib.sha384(acc + digest).digest()


# -- events ------------------------------------------------------------------------------------


def test_boot_event_is_the_sha384_of_its_payload() -> None:
    event = boot_event(2, 6, b"kernel cmdline")
    assert event == Event(2, 6, hashlib.sha384(b"kernel cmdline").digest(), "", b"kernel cmdline")
    assert event.to_json() == {
        "imr": 2,
        "event_type": 6,
        "digest": hashlib.sha384(b"kernel cmdline").hexdigest(),
        "event": "",
        "event_payload": b"kernel cmdline".hex(),
    }


def test_runtime_event_follows_dstacks_rule() -> None:
    assert DSTACK_RUNTIME_EVENT_TYPE == 0x08000001
    event = runtime_event("compose-hash", b"\x01\x02")
    expected = hashlib.sha384(b"\x01\x00\x00\x08:compose-hash:\x01\x02").digest()
    assert event == Event(3, 0x08000001, expected, "compose-hash", b"\x01\x02")
    assert event.to_json()["event_payload"] == "0102"


def test_replay_extends_each_imr_in_order_from_zeros() -> None:
    zero = bytes(48)
    assert replay_rtmrs([]) == (zero, zero, zero, zero)
    first, second = boot_event(1, 4, b"a"), boot_event(1, 4, b"b")
    third = runtime_event("x", b"")
    rtmrs = replay_rtmrs([first, second, third])
    assert rtmrs == (
        zero,
        extend(extend(zero, first.digest), second.digest),
        zero,
        extend(zero, third.digest),
    )
    # The JSON form replays to the same values (as a verifier reads it off the wire).
    as_json = [json.loads(json.dumps(e.to_json())) for e in (first, second, third)]
    assert replay_rtmrs(as_json) == rtmrs
    assert replay_rtmrs([{"imr": "0", "digest": first.digest.hex()}])[0] == extend(
        zero, first.digest
    )


# -- the event log against a real dstack capture -----------------------------------------------


def test_runtime_events_are_dstacks_in_dstacks_order() -> None:
    ours = build_measurements(NEAR_UPSTREAM, 0).event_log
    real = [e for e in real_capture()["event_log"] if e["imr"] == 3]
    assert [e.event for e in ours if e.imr == 3] == [e["event"] for e in real]
    for event in ours:
        if event.imr == 3:
            assert event == runtime_event(event.event, event.event_payload)


def test_runtime_event_payloads_have_the_real_sizes() -> None:
    real = {e["event"]: len(e["event_payload"]) // 2 for e in real_capture()["event_log"]}
    for event in build_measurements(NEAR_UPSTREAM, 0).event_log:
        if event.imr == 3 and event.event != "key-provider":
            assert len(event.event_payload) == real[event.event], event.event


def test_boot_events_follow_a_real_boot_in_order() -> None:
    """Our boot events are a subsequence of a real dstack boot's (imr, event_type) sequence."""
    real = [(e["imr"], e["event_type"]) for e in real_capture()["event_log"] if e["imr"] != 3]
    ours = [(e.imr, e.event_type) for e in build_measurements(NEAR_UPSTREAM, 0).event_log]
    ours_boot = [pair for pair in ours if pair[0] != 3]
    assert ours[: len(ours_boot)] == ours_boot  # boot events come first
    position = 0
    for pair in ours_boot:
        position = real.index(pair, position) + 1
    assert len(ours_boot) == 13
    for event in build_measurements(NEAR_UPSTREAM, 0).event_log[:13]:
        assert event == boot_event(event.imr, event.event_type, event.event_payload)
        assert event.event == ""


def test_runtime_payloads_carry_what_they_name() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    payloads = {e.event: e.event_payload for e in m.event_log if e.imr == 3}
    assert payloads == {
        "system-preparing": b"",
        "app-id": m.app_id,
        "compose-hash": m.compose_hash,
        "instance-id": m.instance_id,
        "boot-mr-done": b"",
        "mr-kms": payloads["mr-kms"],
        "os-image-hash": m.os_image_hash,
        "key-provider": m.key_provider_info.encode(),
        "storage-fs": b"zfs",
        "system-ready": b"",
    }
    assert len(payloads["mr-kms"]) == 32


# -- the compose, vm_config, info --------------------------------------------------------------


def test_app_compose_is_dstacks_pretty_printed_document() -> None:
    compose = app_compose_for("org/Model-7B")
    document = json.loads(compose)
    assert compose == json.dumps(document, indent=4)
    assert document == {
        "manifest_version": 2,
        "name": "venice-simulator",
        "runner": "docker-compose",
        "docker_compose_file": (
            "services:\n"
            "  inference-proxy:\n"
            f"    image: venice-e2ee-proxy/simulator@sha256:{SIMULATED_IMAGE_DIGEST}\n"
            "    environment:\n"
            "      - MODEL_NAME=org/Model-7B\n"
        ),
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
    real = json.loads(real_capture()["info"]["tcb_info"]["app_compose"])
    assert list(document) == list(real)[: len(document)]  # dstack's keys in dstack's order
    assert hashlib.sha256(b"venice-simulator image").hexdigest() == SIMULATED_IMAGE_DIGEST


def test_vm_config_is_a_production_image_in_dstacks_form() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    assert m.vm_config == json.dumps(json.loads(m.vm_config), separators=(",", ":"))
    config = json.loads(m.vm_config)
    assert config == {
        "spec_version": 1,
        "os_image_hash": m.os_image_hash.hex(),
        "cpu_count": 16,
        "memory_size": 68719476736,
        "qemu_version": "9.2.1",
        "pci_hole64_size": 1125899906842624,
        "hugepages": False,
        "num_gpus": 1,
        "num_nvswitches": 0,
        "hotplug_off": True,
        "image": "dstack-nvidia-0.5.5",
    }
    assert IMAGE_NAME == "dstack-nvidia-0.5.5"
    assert not config["image"].endswith("-dev")
    real = json.loads(real_capture()["info"]["vm_config"])
    assert list(config) == list(real)
    assert config["image"] == real["image"]


def test_key_provider_info_is_kms_in_compact_json() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    assert m.key_provider_info == json.dumps(json.loads(m.key_provider_info), separators=(",", ":"))
    info = json.loads(m.key_provider_info)
    assert list(info) == ["name", "id"]
    assert info["name"] == "kms"
    assert len(bytes.fromhex(info["id"])) == 32


def test_tcb_info_and_mr_aggregated() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    assert m.tcb_info() == {
        "app_compose": m.app_compose,
        "compose_hash": m.compose_hash.hex(),
        "device_id": m.device_id.hex(),
        "event_log": [e.to_json() for e in m.event_log],
        "mrtd": m.mr_td.hex(),
        "os_image_hash": m.os_image_hash.hex(),
        "rtmr0": m.rtmrs[0].hex(),
        "rtmr1": m.rtmrs[1].hex(),
        "rtmr2": m.rtmrs[2].hex(),
        "rtmr3": m.rtmrs[3].hex(),
    }
    assert list(m.tcb_info()) == list(real_capture()["info"]["tcb_info"])
    assert m.event_log_json() == [e.to_json() for e in m.event_log]
    assert m.mr_aggregated == hashlib.sha256(m.mr_td + b"".join(m.rtmrs)).digest()


def test_the_measurements_bind_together() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    assert isinstance(m, Measurements)
    assert m.compose_hash == hashlib.sha256(m.app_compose.encode()).digest()
    assert m.app_compose == app_compose_for(NEAR_UPSTREAM)
    assert m.rtmrs == replay_rtmrs(m.event_log)
    assert m.mr_td == SIMULATED_MR_TD
    assert len(m.mr_td) == 48
    assert (len(m.app_id), len(m.instance_id), len(m.device_id), len(m.os_image_hash)) == (
        20,
        20,
        32,
        32,
    )


def test_models_and_seeds_change_what_they_should() -> None:
    base = build_measurements(NEAR_UPSTREAM, 0)
    other_seed = build_measurements(NEAR_UPSTREAM, 7)
    other_model = build_measurements("simulator/Simulated-Reasoning-1B", 0)
    # The seed is the instance: same app, same image, other instance and device.
    assert other_seed.app_id == base.app_id
    assert other_seed.compose_hash == base.compose_hash
    assert other_seed.os_image_hash == base.os_image_hash
    assert other_seed.instance_id != base.instance_id
    assert other_seed.device_id != base.device_id
    # The model is the app: another compose and app id, same image and device.
    assert other_model.app_id != base.app_id
    assert other_model.compose_hash != base.compose_hash
    assert other_model.instance_id != base.instance_id
    assert other_model.device_id == base.device_id
    assert other_model.os_image_hash == base.os_image_hash
    assert other_model.key_provider_info == base.key_provider_info
    assert other_model.vm_config == base.vm_config
    assert build_measurements(NEAR_UPSTREAM, 0) == base


def test_known_answer_values() -> None:
    m = build_measurements(NEAR_UPSTREAM, 0)
    assert m.compose_hash.hex() == (
        "fb2d55148a58a0277622af40d1e02593dcb00b4bfb9051d6450be3484d9d7dda"
    )
    assert [r.hex() for r in m.rtmrs] == [
        "a75743d43dd30c1ea9941b1ed2d6d03696ba427d27ff89cecaffc2411faabd1e"
        "4c3a1efe5501076d196c09d520c7a85b",
        "36a6ee09cbd02629d1ef0cce54ad2ef05566e8c7a9935559c66fca1d57023083"
        "81839f94b4fd37e8cabeaaa4a48f6948",
        "aadb0d2895188941e9c0ff3fc69d71b770ccca119702903ab565e273c6f72162"
        "1a2f7c4f8aaefe940bc259246a687696",
        "b8c6c5dc65c9927d0d202ed6113f375c71a0363639b41f4d2c7f189411e9e0fa"
        "d71a51c7b5c84e3143efce6c2f745af3",
    ]
    assert m.mr_td.hex() == (
        "6d2ad351cd18e1833f73de99f62c54bb24db29b8e02bcc8bd1312cb9d75b6bf7"
        "2f278f5120f61646ad85615e83b38401"
    )
    assert m.app_id.hex() == "1a79424fed272d93ae6dde9d8c9a2b8bb0eaf0ad"
    assert m.instance_id.hex() == "d399ec27818b01c7bbba4d643461aa3bca14ae7f"
    assert m.device_id.hex() == "d96c5afc5cc262ec81b27fa566634957180cecf98c986c63677496b08a5b2cb2"
    assert m.os_image_hash.hex() == (
        "bb5daf96e37eab0516845d6f212bf2be0f85cc0a654b410e14ba338736387686"
    )
    assert m.key_provider_info == (
        '{"name":"kms","id":"2ce33395bc98d8d21eae4ffa4c179446e2be67b4acc177f74a66966c653c05ef"}'
    )
    assert m.mr_aggregated.hex() == (
        "ae9bbf370bbc598a2354adc5cd9bb5d40adb770f629bedcc445ea2eee8dd13b4"
    )
    seven = build_measurements(NEAR_UPSTREAM, 7)
    assert seven.instance_id.hex() == "ef857baa322d531aab2c9163c2b2ef85eabe4c7f"
    assert seven.device_id.hex() == (
        "e283c7059f018ed3ba309e9096a9e6c6926682a6cdb520ab02eff4eb2d3fb83a"
    )


def test_the_u32_event_type_is_little_endian() -> None:
    assert struct.pack("<I", DSTACK_RUNTIME_EVENT_TYPE) == b"\x01\x00\x00\x08"
