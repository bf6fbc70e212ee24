"""Settings: sources and precedence, clear one-line errors, the API key, the example file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from proxy.settings import Settings, SettingsError, load_settings, resolve_api_key

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.upstream.base_url == "https://api.venice.ai/api/v1"
    assert settings.privacy.non_e2ee == "reject"
    assert settings.signatures.mode == "async"
    assert settings.attestation.dcap == "require"
    assert settings.attestation.nvidia == "nras"


def test_example_file_documents_every_key_with_its_default() -> None:
    from_file = load_settings(EXAMPLE, environ={})
    assert from_file.model_dump() == Settings().model_dump()
    documented = tomllib.loads(EXAMPLE.read_text())
    commented = EXAMPLE.read_text()
    for section, model in Settings.model_fields.items():
        assert section in documented, section
        assert model.annotation is not None
        for key in model.annotation.model_fields:
            assert key in documented[section] or f"# {key} =" in commented, f"{section}.{key}"


def test_precedence_overrides_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nport = 9000\nhost = "127.0.0.2"\n[upstream]\nbase_url = "http://f"\n'
    )
    monkeypatch.setenv("VENICE_PROXY_SERVER__PORT", "9100")
    monkeypatch.setenv("VENICE_PROXY_UPSTREAM__BASE_URL", "http://env")
    settings = load_settings(config, overrides={"server": {"port": 9200}})
    assert settings.server.port == 9200  # CLI beats env
    assert settings.server.host == "127.0.0.2"  # file value kept where nothing overrides it
    assert settings.upstream.base_url == "http://env"  # env beats file


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[attestation]\ndcap = "off"\ncache_ttl_s = 60\n')
    settings = load_settings(environ={"VENICE_PROXY_CONFIG": str(config)})
    assert settings.attestation.cache_ttl_s == 60


def test_env_nested_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENICE_PROXY_MODELS__ALIASES", '{"gpt-4o": "e2ee-glm-5-1"}')
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__DCAP", "off")
    settings = load_settings()
    assert settings.models.aliases == {"gpt-4o": "e2ee-glm-5-1"}


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[attestation]\ndcap = "maybe"\n', "attestation.dcap"),
        ('[attestation]\nnvidia = "gpu"\n', "attestation.nvidia"),
        ('[attestation]\nallowed_tcb_status = ["Revoked"]\n', "never be allowed"),
        ('[attestation]\nallowed_tcb_status = ["Fine"]\n', "unknown TCB status"),
        ('[attestation.pins."m"]\nmrtd = ["abc"]\n', "attestation.pins.m"),
        ('[signatures]\nmode = "sometimes"\n', "signatures.mode"),
        ('[privacy]\nnon_e2ee = "allow"\n', "privacy.non_e2ee"),
        ('[privacy]\nnon_e2ee = "passthrough"\n', "privacy.passthrough_models"),
        ('[privacy]\npassthrough_models = ["e2ee-glm-5-1"]\n', "never sent prompts in plaintext"),
        ('[privacy]\nforward_fields = ["user"]\n', "has its own rule (local only)"),
        ('[privacy]\nforward_fields = ["logprobs"]\n', "has its own rule (refused)"),
        ('[privacy]\nforward_fields = ["Bad-Name"]\n', "not a lower-case field name"),
        ('[privacy]\nforward_fields = ["metadata.x"]\n', "venice_parameters.<key>"),
        (
            '[privacy]\nforward_fields = ["venice_parameters.character_slug"]\n',
            "has its own rule (refused)",
        ),
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[server]\nprot = 1\n", "server.prot"),
        ('[upstream]\nbase_url = "ftp://x"\n', "upstream.base_url"),
        ("[bogus]\nx = 1\n", "bogus"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_api_key_sources(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert resolve_api_key(settings, {}) is None
    key = resolve_api_key(settings, {"VENICE_API_KEY": " k-123 "})
    assert key is not None
    assert key.get_secret_value() == "k-123"
    assert "k-123" not in repr(key)
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    with_file = load_settings(overrides={"upstream": {"api_key_file": key_file}}, environ={})
    from_file = resolve_api_key(with_file, {})
    assert from_file is not None
    assert from_file.get_secret_value() == "from-file"
    key_file.write_text("")
    with pytest.raises(SettingsError, match="empty"):
        resolve_api_key(with_file, {})


def test_api_key_is_not_a_config_file_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[upstream]\napi_key = "sk-leak"\n')
    with pytest.raises(SettingsError, match=r"upstream\.api_key"):
        load_settings(config, environ={})


def test_privacy_settings_that_are_allowed() -> None:
    settings = load_settings(
        overrides={
            "privacy": {
                "non_e2ee": "passthrough",
                "passthrough_models": ["simulated-plain"],
                "forward_fields": [
                    "some_new_field",
                    "logit_bias",
                    "stop_token_ids",
                    "venice_parameters.some_new_key",
                ],
            }
        },
        environ={},
    )
    assert settings.privacy.passthrough_models == ["simulated-plain"]
    assert "logit_bias" in settings.privacy.forward_fields


@pytest.mark.parametrize(
    "server",
    [
        {"api_keys": "sk-local-4242"},  # not a list
        {"api_keys": [123456789]},  # a number where a string is due: located at api_keys.0
        {"api_keys": ["fine", 987654321]},
    ],
)
def test_a_bad_client_api_key_is_never_shown_in_the_error(server: dict[str, object]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"server": server}, environ={})
    message = str(info.value)
    assert message.startswith("invalid setting server.api_keys")
    for secret in ("sk-local-4242", "123456789", "987654321", "got"):
        assert secret not in message
