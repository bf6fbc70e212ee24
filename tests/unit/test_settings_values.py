"""Every setting's default, bounds and environment name; config-file loading; the one-line
errors (which never show a client API key); the Venice API key's sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from proxy.settings import Settings, SettingsError, load_settings, resolve_api_key

DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8000,
        "api_keys": [],
        "allowed_hosts": [],
        "cors_origins": [],
        "tls_cert": None,
        "tls_key": None,
        "max_body_bytes": 8 * 1024 * 1024,
        "max_in_flight": 512,
        "header_timeout_s": 20.0,
        "body_timeout_s": 60.0,
        "shutdown_grace_s": 30.0,
        "workers": 1,
    },
    "upstream": {
        "base_url": "https://api.venice.ai/api/v1",
        "api_key_file": None,
        "connect_timeout_s": 10.0,
        "first_byte_timeout_s": 120.0,
        "idle_timeout_s": 120.0,
        "models_cache_ttl_s": 300.0,
        "retries": 2,
        "retry_max_delay_s": 8.0,
        "retry_max_total_s": 30.0,
        "max_read_ahead_bytes": 512 * 1024,
        "max_event_bytes": 4 * 1024 * 1024,
        "max_json_bytes": 4 * 1024 * 1024,
        "max_answer_chars": 4_000_000,
    },
    "attestation": {
        "dcap": "require",
        "pccs_url": "https://api.trustedservices.intel.com",
        "collateral_file": None,
        "nvidia": "nras",
        "nras_url": "https://nras.attestation.nvidia.com/v3/attest/gpu",
        "nras_jwks_url": "https://nras.attestation.nvidia.com/.well-known/jwks.json",
        "software": "require",
        "allow_dev_image": False,
        "cache_ttl_s": 1800.0,
        "max_fetches_per_minute": 6,
        "failure_cache_size": 256,
        "allowed_tcb_status": ["UpToDate", "SWHardeningNeeded"],
        "pins": {},
        "warm_up": [],
        "gateway_models": "refuse",
        "trust_levels": {},
        "state_dir": None,
        "allow_unpinned_images": False,
        "extra_mrseam": [],
        "extra_mrtd": [],
        "gateway_kms_roots": [],
        "gateway_app_ids": [],
    },
    "privacy": {"non_e2ee": "reject", "passthrough_models": [], "forward_fields": []},
    "signatures": {"mode": "async"},
    "tools": {"mode": "emulate", "repair_attempts": 1, "conventions": {}, "disabled_models": []},
    "models": {"aliases": {}},
    "logging": {"level": "info", "format": "auto", "audit_log": None},
}


def test_every_default() -> None:
    assert load_settings(environ={}).model_dump() == DEFAULTS


# (section, key, lowest accepted, refused below it with pydantic's words, highest accepted or
# None, refused above it)
BOUNDS: list[tuple[str, str, Any, Any, str, Any, Any, str]] = [
    (
        "server",
        "port",
        0,
        -1,
        "greater than or equal to 0",
        65535,
        65536,
        "less than or equal to 65535",
    ),
    ("server", "max_body_bytes", 1, 0, "greater than 0", None, None, ""),
    ("server", "max_in_flight", 1, 0, "greater than 0", None, None, ""),
    ("server", "header_timeout_s", 0.01, 0, "greater than 0", None, None, ""),
    ("server", "body_timeout_s", 0.01, 0, "greater than 0", None, None, ""),
    ("server", "shutdown_grace_s", 0.0, -0.5, "greater than or equal to 0", None, None, ""),
    ("server", "workers", 1, 0, "greater than or equal to 1", 64, 65, "less than or equal to 64"),
    ("upstream", "connect_timeout_s", 0.01, 0, "greater than 0", None, None, ""),
    ("upstream", "first_byte_timeout_s", 0.01, 0, "greater than 0", None, None, ""),
    ("upstream", "idle_timeout_s", 0.01, 0, "greater than 0", None, None, ""),
    ("upstream", "models_cache_ttl_s", 0.0, -1, "greater than or equal to 0", None, None, ""),
    (
        "upstream",
        "retries",
        0,
        -1,
        "greater than or equal to 0",
        10,
        11,
        "less than or equal to 10",
    ),
    ("upstream", "retry_max_delay_s", 0.0, -1, "greater than or equal to 0", None, None, ""),
    ("upstream", "retry_max_total_s", 0.0, -1, "greater than or equal to 0", None, None, ""),
    (
        "upstream",
        "max_read_ahead_bytes",
        1024,
        1023,
        "greater than or equal to 1024",
        None,
        None,
        "",
    ),
    ("upstream", "max_event_bytes", 1024, 1023, "greater than or equal to 1024", None, None, ""),
    ("upstream", "max_json_bytes", 1024, 1023, "greater than or equal to 1024", None, None, ""),
    ("upstream", "max_answer_chars", 1024, 1023, "greater than or equal to 1024", None, None, ""),
    ("attestation", "cache_ttl_s", 0.01, 0, "greater than 0", None, None, ""),
    ("attestation", "max_fetches_per_minute", 1, 0, "greater than or equal to 1", None, None, ""),
    ("attestation", "failure_cache_size", 1, 0, "greater than or equal to 1", None, None, ""),
    (
        "tools",
        "repair_attempts",
        0,
        -1,
        "greater than or equal to 0",
        3,
        4,
        "less than or equal to 3",
    ),
]


@pytest.mark.parametrize(
    ("section", "key", "low", "below", "low_words", "high", "above", "high_words"), BOUNDS
)
def test_bounds_are_enforced_with_a_line_naming_the_key(
    section: str,
    key: str,
    low: Any,
    below: Any,
    low_words: str,
    high: Any,
    above: Any,
    high_words: str,
) -> None:
    assert (
        getattr(getattr(load_settings(overrides={section: {key: low}}, environ={}), section), key)
        == low
    )
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={section: {key: below}}, environ={})
    assert (
        str(info.value)
        == f"invalid setting {section}.{key}: Input should be {low_words} (got {below!r})"
    )
    if high is None:
        return
    assert (
        getattr(getattr(load_settings(overrides={section: {key: high}}, environ={}), section), key)
        == high
    )
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={section: {key: above}}, environ={})
    assert (
        str(info.value)
        == f"invalid setting {section}.{key}: Input should be {high_words} (got {above!r})"
    )


@pytest.mark.parametrize(("section", "key", "low", "below"), [b[:4] for b in BOUNDS])
def test_each_bounded_setting_has_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, section: str, key: str, low: Any, below: Any
) -> None:
    name = f"VENICE_PROXY_{section.upper()}__{key.upper()}"
    monkeypatch.setenv(name, str(low))
    assert getattr(getattr(load_settings(environ={}), section), key) == low
    monkeypatch.setenv(name, str(below))
    with pytest.raises(SettingsError, match=rf"^invalid setting {section}\.{key}: "):
        load_settings(environ={})


# Every choice a Literal setting accepts, as the environment spells it.
CHOICES: list[tuple[str, str, list[str]]] = [
    ("attestation", "dcap", ["require", "off"]),
    ("attestation", "nvidia", ["off", "nonce", "nras"]),
    ("attestation", "software", ["require", "off"]),
    ("attestation", "gateway_models", ["refuse", "allow"]),
    ("signatures", "mode", ["off", "async", "strict"]),
    ("tools", "mode", ["emulate", "refuse"]),
    ("logging", "level", ["debug", "info", "warning", "error"]),
    ("logging", "format", ["auto", "json", "console"]),
]


@pytest.mark.parametrize(("section", "key", "choices"), CHOICES)
def test_each_choice_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, section: str, key: str, choices: list[str]
) -> None:
    name = f"VENICE_PROXY_{section.upper()}__{key.upper()}"
    for choice in choices:
        monkeypatch.setenv(name, choice)
        assert getattr(getattr(load_settings(environ={}), section), key) == choice
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(SettingsError) as info:
        load_settings(environ={})
    message = str(info.value)
    assert message.startswith(f"invalid setting {section}.{key}: Input should be ")
    assert message.endswith(" (got 'bogus')")


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1


def test_base_url_loses_its_trailing_slash_and_may_be_plain_http() -> None:
    settings = load_settings(
        overrides={"upstream": {"base_url": "http://127.0.0.1:9/v1//"}}, environ={}
    )
    assert settings.upstream.base_url == "http://127.0.0.1:9/v1"


def test_a_bad_value_shows_what_was_given_but_a_bad_list_does_not() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"server": {"host": 5}}, environ={})
    assert str(info.value) == "invalid setting server.host: Input should be a valid string (got 5)"
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"server": {"port": [1, 2]}}, environ={})
    assert str(info.value) == "invalid setting server.port: Input should be a valid integer"
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"models": {"aliases": ["a"]}}, environ={})
    assert str(info.value) == "invalid setting models.aliases: Input should be a valid dictionary"


# --- hex lists: the extended measurement policy and the replaced gateway anchors ----------------

HEX_LISTS = [
    ("extra_mrseam", 96, "measurement"),
    ("extra_mrtd", 96, "measurement"),
    ("gateway_kms_roots", 66, "compressed secp256k1 KMS root"),
    ("gateway_app_ids", 40, "app id"),
]


@pytest.mark.parametrize(("key", "digits", "what"), HEX_LISTS)
def test_hex_lists_are_normalized(key: str, digits: int, what: str) -> None:
    plain = ("0123456789abcdef" * 7)[:digits]
    given = [f" 0x{plain.upper()} ", plain, "0X" + plain]
    settings = load_settings(overrides={"attestation": {key: given}}, environ={})
    assert getattr(settings.attestation, key) == [plain, plain, plain]


@pytest.mark.parametrize(("key", "digits", "what"), HEX_LISTS)
@pytest.mark.parametrize(
    "bad",
    [
        lambda n: "a" * (n - 1),  # one short
        lambda n: "a" * (n + 1),  # one long
        lambda n: "g" + "a" * (n - 1),  # not hex
        lambda n: "a" * (n - 2) + "0x",  # a prefix only counts at the front
        lambda n: "a" * n + "0x",
    ],
)
def test_hex_lists_refuse_what_is_not_the_right_number_of_hex_digits(
    key: str, digits: int, what: str, bad: Any
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"attestation": {key: ["a" * digits, bad(digits)]}}, environ={})
    assert str(info.value) == (
        f"invalid setting attestation.{key}: Value error, {what} values must be {digits} hex digits"
    )


# --- the config file ----------------------------------------------------------------------------


def test_config_file_wins_over_the_environment_variable(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text("[server]\nport = 9001\n")
    from_env = tmp_path / "env.toml"
    from_env.write_text("[server]\nport = 9002\n")
    settings = load_settings(named, environ={"VENICE_PROXY_CONFIG": str(from_env)})
    assert settings.server.port == 9001
    assert load_settings(environ={"VENICE_PROXY_CONFIG": str(from_env)}).server.port == 9002


def test_an_empty_config_variable_means_no_file() -> None:
    assert load_settings(environ={"VENICE_PROXY_CONFIG": ""}).server.port == 8000


def test_config_file_read_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 9003\n")
    monkeypatch.setenv("VENICE_PROXY_CONFIG", str(config))
    assert load_settings().server.port == 9003


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"VENICE_PROXY_CONFIG": str(missing)})
    assert str(info.value) == f"config file not found: {missing}"
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path, environ={})  # a folder is not a file
    assert str(info.value) == f"config file not found: {tmp_path}"


def test_a_config_file_that_is_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server\nport = 1\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert message.startswith("cannot read settings: ")
    assert "line 1" in message
    assert "\n" not in message


def test_an_error_names_its_file_key_with_the_prefix(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[tools]\nrepair_attempts = 9\n")
    with pytest.raises(SettingsError) as info:
        load_settings(config, environ={})
    assert str(info.value) == (
        "invalid setting tools.repair_attempts: Input should be less than or equal to 3 (got 9)"
    )


# --- the Venice API key -------------------------------------------------------------------------


def test_api_key_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENICE_API_KEY", "  k-env \n")
    key = resolve_api_key(load_settings(environ={}))
    assert isinstance(key, SecretStr)
    assert key.get_secret_value() == "k-env"
    monkeypatch.delenv("VENICE_API_KEY")
    assert resolve_api_key(load_settings(environ={})) is None


def test_a_blank_api_key_variable_falls_back_to_the_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  k-file\n", encoding="utf-8")
    settings = load_settings(overrides={"upstream": {"api_key_file": key_file}}, environ={})
    key = resolve_api_key(settings, {"VENICE_API_KEY": "   "})
    assert key is not None
    assert key.get_secret_value() == "k-file"


def test_an_unreadable_api_key_file_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "missing-key"
    settings = load_settings(overrides={"upstream": {"api_key_file": key_file}}, environ={})
    with pytest.raises(SettingsError) as info:
        resolve_api_key(settings, {})
    assert str(info.value) == (
        f"upstream.api_key_file: cannot read {key_file}: No such file or directory"
    )
    key_file.write_text(" \n")
    with pytest.raises(SettingsError) as info:
        resolve_api_key(settings, {})
    assert str(info.value) == f"upstream.api_key_file: {key_file} is empty"


def test_settings_built_directly_match_loaded_ones() -> None:
    assert Settings().model_dump() == load_settings(environ={}).model_dump()
