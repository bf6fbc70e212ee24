"""The simulated enclave's answer signatures (proxy/simulator/signing.py,
docs/protocol.md#signatures): EIP-191 over the signed text, recovery of the signer, and EIP-55
addresses, against the published vectors."""

from __future__ import annotations

import pytest

from proxy.core.crypto import address_hex, keypair_from_private
from proxy.simulator.signing import (
    eip55,
    eip191_digest,
    recover_address,
    sign_text,
    signature_text,
)

# The web3.js documentation key (accounts.sign examples).
KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ADDRESS = address_hex(keypair_from_private(KEY).public)
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    "address",
    [
        # EIP-55's own examples: mixed case, all upper and all lower.
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
        "0xde709f2102306220921060314715629080e2fb77",
        "0x27b1fdb04752bbc536007a920d24acb045561c26",
    ],
)
def test_eip55_matches_the_eip_examples(address: str) -> None:
    assert eip55(bytes.fromhex(address[2:])) == address


def test_eip191_digest_counts_utf8_bytes_not_characters() -> None:
    # "é" is one character and two bytes: the prefix says 2.
    assert eip191_digest("é") != eip191_digest("e")
    signature = sign_text(KEY, "é 🦊")
    assert recover_address("é 🦊", signature) == ADDRESS


@pytest.mark.parametrize("text", ["b", "a"])
def test_signatures_recover_with_either_v(text: str) -> None:
    signature = sign_text(KEY, text)
    assert len(signature) == 2 + 130
    assert signature[-2:] == {"b": "1b", "a": "1c"}[text]
    assert recover_address(text, signature) == ADDRESS
    assert recover_address(text, signature.removeprefix("0x")) == ADDRESS


@pytest.mark.parametrize(
    "signature",
    [
        "0x" + "11" * 64 + "1b" + "1b",  # 66 bytes, byte 64 a valid v
        "0x" + "11" * 64 + "1c" + "00",
        "0x" + "11" * 64 + "01",  # v must be 27 or 28, not 0 or 1
        "0x" + "11" * 64 + "1d",
    ],
)
def test_recover_refuses_a_signature_of_the_wrong_shape(signature: str) -> None:
    with pytest.raises(ValueError, match=r"^signature must be 65 bytes with v in \{27, 28\}$"):
        recover_address("text", signature)


def test_signature_text_is_model_request_hash_response_hash() -> None:
    assert signature_text("org/M", b"", b"abc") == f"org/M:{SHA256_EMPTY}:{SHA256_ABC}"
    assert signature_text(None, b"abc", b"") == f"{SHA256_ABC}:{SHA256_EMPTY}"
