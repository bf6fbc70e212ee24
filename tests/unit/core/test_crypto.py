"""Known-answer vectors from tests/fixtures/kat.json, round trips and one-byte tampering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core import crypto
from proxy.core.errors import DecryptionError, InvalidPublicKeyError
from tests.support.fixtures import FIXTURES_DIR

KAT_PATH = FIXTURES_DIR / "kat.json"


def _vectors() -> dict[str, dict[str, Any]]:
    data = json.loads(KAT_PATH.read_text())
    return {vector["name"]: vector for vector in data["vectors"]}


VECTORS = _vectors()
KAT1 = VECTORS["KAT-1 decrypt"]
KAT2 = VECTORS["KAT-2 encrypt"]
BINDING = VECTORS["key binding"]


def test_kat1_shared_secret_is_raw_x_coordinate() -> None:
    recipient = bytes.fromhex(KAT1["recipient_private_key"])
    sender = crypto.keypair_from_private(bytes.fromhex(KAT1["sender_private_key"]))
    assert crypto.shared_x(recipient, sender.public).hex() == KAT1["shared_x"]
    assert crypto.aes_key_for(recipient, sender.public).hex() == KAT1["aes_key"]


def test_kat1_decrypts() -> None:
    recipient = bytes.fromhex(KAT1["recipient_private_key"])
    assert crypto.open_text(recipient, KAT1["blob"]) == KAT1["plaintext"]
    assert crypto.open_text(recipient, KAT1["blob"].upper()) == KAT1["plaintext"]


def test_kat2_encrypts_byte_for_byte() -> None:
    recipient = crypto.keypair_from_private(bytes.fromhex(KAT2["recipient_private_key"]))
    assert recipient.public_hex == KAT2["recipient_public_key"]
    blob = crypto.seal(
        recipient.public,
        KAT2["plaintext"].encode(),
        ephemeral_private=bytes.fromhex(KAT2["ephemeral_private_key"]),
        gcm_nonce=bytes.fromhex(KAT2["gcm_nonce"]),
    )
    assert blob.hex() == KAT2["blob"]
    ephemeral = crypto.keypair_from_private(bytes.fromhex(KAT2["ephemeral_private_key"]))
    assert crypto.aes_key_for(recipient.private, ephemeral.public).hex() == KAT2["aes_key"]
    assert crypto.open_text(recipient.private, KAT2["blob"]) == KAT2["plaintext"]


def test_key_binding_vector() -> None:
    public = bytes.fromhex(BINDING["signing_public_key"])
    assert crypto.address_hex(public) == BINDING["signing_address"]
    report_data = (crypto.address_of(public) + bytes(12) + bytes.fromhex(BINDING["nonce"])).hex()
    assert report_data == BINDING["report_data"]


def test_coincurve_ecdh_is_not_the_protocol_secret() -> None:
    # The trap in DESIGN.md: PrivateKey.ecdh() hashes the point; the protocol uses raw x.
    from coincurve import PrivateKey

    recipient = bytes.fromhex(KAT1["recipient_private_key"])
    sender = crypto.keypair_from_private(bytes.fromhex(KAT1["sender_private_key"]))
    assert PrivateKey(recipient).ecdh(sender.public).hex() != KAT1["shared_x"]


@pytest.mark.parametrize("text", ["", "hello", "ünïcødé ✓ 🦊", "x" * 10_000])
def test_round_trip(text: str) -> None:
    recipient = crypto.generate_keypair()
    blob = crypto.seal_text(recipient.public, text)
    assert crypto.looks_like_ciphertext(blob)
    assert crypto.open_text(recipient.private, blob) == text


def test_empty_string_is_a_minimum_size_blob() -> None:
    recipient = crypto.generate_keypair()
    blob = crypto.seal_text(recipient.public, "")
    assert len(blob) == crypto.MIN_BLOB_HEX == 186


def test_fresh_ephemeral_and_nonce_per_seal() -> None:
    recipient = crypto.generate_keypair()
    first = bytes.fromhex(crypto.seal_text(recipient.public, "same"))
    second = bytes.fromhex(crypto.seal_text(recipient.public, "same"))
    assert first[:65] != second[:65]
    assert first[65:77] != second[65:77]


def test_every_one_byte_tamper_fails() -> None:
    recipient = bytes.fromhex(KAT1["recipient_private_key"])
    blob = bytes.fromhex(KAT1["blob"])
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError) as info:
            crypto.open_blob(recipient, bytes(tampered))
        assert str(info.value) == DecryptionError.default_message


def test_wrong_recipient_fails() -> None:
    with pytest.raises(DecryptionError):
        crypto.open_text(crypto.generate_keypair().private, KAT1["blob"])


@pytest.mark.parametrize(
    "blob",
    ["", "zz", "04" * 92, "05" + "00" * 92, KAT1["blob"][:-2], "not hex at all" * 20],
)
def test_malformed_blobs_fail_without_detail(blob: str) -> None:
    recipient = bytes.fromhex(KAT1["recipient_private_key"])
    with pytest.raises(DecryptionError) as info:
        crypto.open_text(recipient, blob)
    assert info.value.code == "e2ee_decryption_failed"


def test_non_utf8_plaintext_fails() -> None:
    recipient = crypto.generate_keypair()
    blob = crypto.seal(recipient.public, b"\xff\xfe").hex()
    with pytest.raises(DecryptionError):
        crypto.open_text(recipient.private, blob)


def test_parse_public_key_encodings() -> None:
    public = bytes.fromhex(KAT2["recipient_public_key"])
    assert crypto.parse_public_key(public) == public
    assert crypto.parse_public_key(public[1:]) == public
    assert crypto.parse_public_key("0x" + public.hex().upper()) == public
    compressed = bytes([2 + (public[-1] & 1)]) + public[1:33]
    assert crypto.parse_public_key(compressed) == public


@pytest.mark.parametrize("bad", ["04" + "00" * 64, "zz", "04" * 10, b"\x04" + b"\x01" * 64])
def test_parse_public_key_rejects_non_points(bad: str | bytes) -> None:
    with pytest.raises(InvalidPublicKeyError):
        crypto.parse_public_key(bad)


def test_keypair_repr_hides_private_key() -> None:
    pair = crypto.generate_keypair()
    assert pair.private.hex() not in repr(pair)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("04" + "ab" * 92, True),
        ("04" + "AB" * 92, True),
        ("04" + "ab" * 91, False),
        ("05" + "ab" * 92, False),
        ("04" + "ab" * 92 + "a", False),
        ("04" + "zz" * 92, False),
        ("hello", False),
        ("", False),
    ],
)
def test_looks_like_ciphertext(text: str, expected: bool) -> None:
    assert crypto.looks_like_ciphertext(text) is expected


# --- what mutation testing found unpinned (make mutation) ------------------------------------


def test_fresh_and_known_key_pairs_are_uncompressed() -> None:
    for pair in (crypto.generate_keypair(), crypto.keypair_from_private(bytes(31) + b"\x01")):
        assert len(pair.public) == crypto.PUBLIC_KEY_BYTES
        assert pair.public[0] == 0x04
        assert pair.public_hex == pair.public.hex()
        assert crypto.parse_public_key(pair.public) == pair.public


def test_key_text_in_every_encoding_and_prefix() -> None:
    public = bytes.fromhex(KAT2["recipient_public_key"])
    compressed = bytes([2 + (public[-1] & 1)]) + public[1:33]
    for raw in (public, public[1:], compressed):  # 130, 128 and 66 hex digits
        for prefix in ("", "0x", "0X"):
            for text in (raw.hex(), raw.hex().upper()):
                assert crypto.parse_public_key(prefix + text) == public, (prefix, len(text))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("zz", "public key is not valid hex"),
        ("0x0x" + "04" * 65, "public key is not valid hex"),
        ("04" * 10, "public key must be 33, 64 or 65 bytes, got 10"),
        (b"\x04" * 66, "public key must be 33, 64 or 65 bytes, got 66"),
        ("04" + "00" * 64, "public key is not a point on secp256k1"),
        (b"\x04" + b"\x01" * 64, "public key is not a point on secp256k1"),
    ],
)
def test_a_bad_public_key_says_what_is_wrong(bad: str | bytes, message: str) -> None:
    with pytest.raises(InvalidPublicKeyError) as info:
        crypto.parse_public_key(bad)
    assert info.value.message == message
    assert info.value.code == "invalid_public_key"


@pytest.mark.parametrize("size", [0, 11, 13, 16])
def test_seal_refuses_a_gcm_nonce_that_is_not_12_bytes(size: int) -> None:
    recipient = crypto.generate_keypair().public
    with pytest.raises(ValueError, match=r"^GCM nonce must be 12 bytes$"):
        crypto.seal(recipient, b"x", gcm_nonce=bytes(size))


def test_seal_with_a_pair_made_ahead_uses_that_pair() -> None:
    recipient = crypto.generate_keypair()
    ephemeral = crypto.generate_keypair()
    blob = crypto.seal(recipient.public, b"hello", ephemeral=ephemeral)
    assert blob[:65] == ephemeral.public
    assert crypto.open_blob(recipient.private, blob) == b"hello"
    text = crypto.seal_text(recipient.public, "h\u00e9", ephemeral=ephemeral)
    assert bytes.fromhex(text)[:65] == ephemeral.public
    assert crypto.open_text(recipient.private, text) == "h\u00e9"


def test_fresh_keys_hands_out_each_pair_once_and_fills_to_its_capacity() -> None:
    keys = crypto.FreshKeys(3)
    made_now = keys.take()  # nothing ready: made on the spot
    assert crypto.keypair_from_private(made_now.private) == made_now
    assert keys.wanted()
    for _ in range(5):
        keys.make_one()
    assert not keys.wanted()
    assert repr(keys) == "FreshKeys(3 of 3 ready)"  # no more made than there is room for
    ready = [keys.take(), keys.take(), keys.take()]
    assert len({pair.public for pair in [made_now, *ready]}) == 4
    assert all(crypto.keypair_from_private(p.private) == p for p in ready)
    assert keys.wanted()
    fourth = keys.take()  # empty again: made on the spot, still new
    assert fourth.public not in {pair.public for pair in [made_now, *ready]}


def test_fresh_keys_repr_shows_no_key() -> None:
    keys = crypto.FreshKeys(2)
    keys.make_one()
    pair = keys._ready[0]
    assert repr(keys) == "FreshKeys(1 of 2 ready)"
    assert pair.private.hex() not in repr(keys)
    assert pair.public.hex() not in repr(keys)


def test_sealing_with_a_derived_key_is_sealing_with_its_ephemeral() -> None:
    recipient = crypto.generate_keypair()
    ephemeral = crypto.generate_keypair()
    key = crypto.aes_key_for(ephemeral.private, recipient.public)
    nonce = bytes(range(12))
    blob = crypto.seal_with_key(key, ephemeral.public, b"hello", gcm_nonce=nonce)
    assert blob == crypto.seal(
        recipient.public, b"hello", ephemeral_private=ephemeral.private, gcm_nonce=nonce
    )
    assert crypto.split_blob(blob)[:2] == (ephemeral.public, nonce)
    assert crypto.open_blob(recipient.private, blob) == b"hello"


def test_sealing_with_a_derived_key_draws_a_fresh_nonce_per_field() -> None:
    recipient = crypto.generate_keypair()
    ephemeral = crypto.generate_keypair()
    key = crypto.aes_key_for(ephemeral.private, recipient.public)
    blobs = [crypto.seal_with_key(key, ephemeral.public, b"same") for _ in range(3)]
    assert len({crypto.split_blob(blob)[1] for blob in blobs}) == 3
    assert {crypto.open_blob(recipient.private, blob) for blob in blobs} == {b"same"}


@pytest.mark.parametrize("size", [0, 11, 13])
def test_sealing_with_a_derived_key_refuses_a_nonce_that_is_not_12_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        crypto.seal_with_key(bytes(32), bytes(65), b"x", gcm_nonce=bytes(size))
