"""Settings: one class, built once at the edge and passed down as a value.

Sources, highest precedence first (written in code in :meth:`Settings.settings_customise_sources`):

1. explicit overrides (CLI flags), 2. environment variables ``VENICE_PROXY_<SECTION>__<KEY>``,
3. the TOML file (``--config FILE`` or ``VENICE_PROXY_CONFIG``), 4. defaults.

The Venice API key is not a setting: it comes from ``VENICE_API_KEY`` or the file named by
``upstream.api_key_file`` (see :func:`resolve_api_key`), never from the TOML file and never from a
client. Unknown keys are errors (a typo must not silently fall back to a default), and so are
values the proxy does not implement yet: :func:`load_settings` turns every such problem into one
:class:`SettingsError` line that names the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_BASE_URL = "https://api.venice.ai/api/v1"
INTEL_PCS_URL = "https://api.trustedservices.intel.com"
NRAS_URL = "https://nras.attestation.nvidia.com/v3/attest/gpu"
NRAS_JWKS_URL = "https://nras.attestation.nvidia.com/.well-known/jwks.json"
CONFIG_ENV = "VENICE_PROXY_CONFIG"
API_KEY_ENV = "VENICE_API_KEY"


class SettingsError(Exception):
    """A configuration problem, reported as one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """``[server]``: the local listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_in_flight: int = Field(default=512, gt=0)
    header_timeout_s: float = Field(default=20.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    workers: int = Field(default=1, ge=1, le=64)


class UpstreamSettings(_Section):
    """``[upstream]``: Venice (or the simulator)."""

    base_url: str = DEFAULT_BASE_URL
    api_key_file: Path | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    first_byte_timeout_s: float = Field(default=120.0, gt=0)
    idle_timeout_s: float = Field(default=120.0, gt=0)
    models_cache_ttl_s: float = Field(default=300.0, ge=0)
    retries: int = Field(default=2, ge=0, le=10)
    retry_max_delay_s: float = Field(default=8.0, ge=0)
    retry_max_total_s: float = Field(default=30.0, ge=0)
    max_read_ahead_bytes: int = Field(default=512 * 1024, ge=1024)
    max_event_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_answer_chars: int = Field(default=4_000_000, ge=1024)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class PinsSettings(_Section):
    """Allowed measurement values for one model (lowercase hex; empty = not pinned). Lists, so
    a rollout can allow the old and the new value at once."""

    mrtd: list[str] = Field(default_factory=list)
    rtmr0: list[str] = Field(default_factory=list)
    rtmr1: list[str] = Field(default_factory=list)
    rtmr2: list[str] = Field(default_factory=list)
    compose_hash: list[str] = Field(default_factory=list)
    os_image_hash: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_hex(self) -> PinsSettings:
        from proxy.attestation import MeasurementPins

        MeasurementPins(**{name: tuple(values) for name, values in self})
        return self


def _hex_list(values: list[str], digits: int, what: str) -> list[str]:
    normalized: list[str] = []
    for value in values:
        text = value.strip().lower().removeprefix("0x")
        if len(text) != digits or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"{what} values must be {digits} hex digits")
        normalized.append(text)
    return normalized


class AttestationSettings(_Section):
    """``[attestation]``: what a model's TEE must prove before a prompt is encrypted to it.

    Trust levels (``gateway_models``, ``trust_levels``, ``state_dir``): an ``aci/1`` report
    attests only Venice's gateway, not the host that runs the model; such models are refused
    unless ``gateway_models = "allow"`` (or ``trust_levels`` names ``gateway`` for the model).
    The level each model was attested at is remembered in ``state_dir`` (default for ``serve``:
    ``$XDG_STATE_HOME/venice-e2ee-proxy``; unset in library use: remembered in memory only) and a
    model once ``enclave`` that answers as ``gateway`` is refused until accepted with
    ``venice-e2ee-proxy trust accept MODEL``. ``extra_mrseam``/``extra_mrtd`` extend the shipped
    measurement policy; ``gateway_kms_roots``/``gateway_app_ids`` replace its gateway anchors.
    """

    dcap: Literal["require", "off"] = "require"
    pccs_url: str = INTEL_PCS_URL
    collateral_file: Path | None = None
    nvidia: Literal["off", "nonce", "nras"] = "nras"
    nras_url: str = NRAS_URL
    nras_jwks_url: str = NRAS_JWKS_URL
    software: Literal["require", "off"] = "require"
    allow_dev_image: bool = False
    cache_ttl_s: float = Field(default=1800.0, gt=0)
    max_fetches_per_minute: int = Field(default=6, ge=1)
    failure_cache_size: int = Field(default=256, ge=1)
    allowed_tcb_status: list[str] = Field(default_factory=lambda: ["UpToDate", "SWHardeningNeeded"])
    pins: dict[str, PinsSettings] = Field(default_factory=dict)
    warm_up: list[str] = Field(default_factory=list)
    gateway_models: Literal["refuse", "allow"] = "refuse"
    trust_levels: dict[str, Literal["enclave", "gateway"]] = Field(default_factory=dict)
    state_dir: Path | None = None
    allow_unpinned_images: bool = False
    extra_mrseam: list[str] = Field(default_factory=list)
    extra_mrtd: list[str] = Field(default_factory=list)
    gateway_kms_roots: list[str] = Field(default_factory=list)
    gateway_app_ids: list[str] = Field(default_factory=list)

    @field_validator("extra_mrseam", "extra_mrtd")
    @classmethod
    def _measurements(cls, value: list[str]) -> list[str]:
        return _hex_list(value, 96, "measurement")

    @field_validator("gateway_kms_roots")
    @classmethod
    def _kms_roots(cls, value: list[str]) -> list[str]:
        return _hex_list(value, 66, "compressed secp256k1 KMS root")

    @field_validator("gateway_app_ids")
    @classmethod
    def _app_ids(cls, value: list[str]) -> list[str]:
        return _hex_list(value, 40, "app id")

    @field_validator("allowed_tcb_status")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        from proxy.attestation import KNOWN_TCB_STATUSES

        for status in value:
            if status == "Revoked":
                raise ValueError("'Revoked' can never be allowed")
            if status not in KNOWN_TCB_STATUSES:
                raise ValueError(f"unknown TCB status {status!r}")
        return value


class PrivacySettings(_Section):
    """``[privacy]``: models that cannot do E2EE, and fields to send in plaintext anyway."""

    non_e2ee: Literal["reject", "passthrough"] = "reject"
    passthrough_models: list[str] = Field(default_factory=list)
    forward_fields: list[str] = Field(default_factory=list)

    @field_validator("passthrough_models")
    @classmethod
    def _never_e2ee_models(cls, value: list[str]) -> list[str]:
        from proxy.core.fields import E2EE_PREFIX

        for model in value:
            if model.startswith(E2EE_PREFIX):
                raise ValueError(f"{model!r}: an e2ee- model is never sent prompts in plaintext")
        return value

    @field_validator("forward_fields")
    @classmethod
    def _forwardable(cls, value: list[str]) -> list[str]:
        from proxy.core.fields import forward_fields_problem

        for name in value:
            problem = forward_fields_problem(name)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _passthrough_names_models(self) -> PrivacySettings:
        if self.non_e2ee == "passthrough" and not self.passthrough_models:
            raise ValueError(
                'non_e2ee = "passthrough" needs privacy.passthrough_models: the models that may '
                "receive prompts in plaintext"
            )
        return self


class SignaturesSettings(_Section):
    """``[signatures]``: verify each completed answer's enclave signature (``off``, ``async``:
    after the fact, logged and counted; ``strict``: an answer whose signature fails is an
    error)."""

    mode: Literal["off", "async", "strict"] = "async"


class ToolsSettings(_Section):
    """``[tools]``: function calling and structured outputs, emulated inside the encrypted
    messages (:mod:`proxy.core.tools`). ``mode = "refuse"`` answers such requests with a 400
    instead; ``disabled_models`` does the same for single models. ``conventions`` overrides the
    calling convention chosen from the model list (model id -> convention name)."""

    mode: Literal["emulate", "refuse"] = "emulate"
    repair_attempts: int = Field(default=1, ge=0, le=3)
    conventions: dict[str, Literal["hermes", "qwen3_xml", "glm", "json"]] = Field(
        default_factory=dict
    )
    disabled_models: list[str] = Field(default_factory=list)


class ModelsSettings(_Section):
    """``[models]``: client-facing aliases for Venice model ids."""

    aliases: dict[str, str] = Field(default_factory=dict)


class LoggingSettings(_Section):
    """``[logging]``: structured logs; never any content, key or key material."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    audit_log: Path | None = None


class Settings(BaseSettings):
    """Every setting of the proxy."""

    model_config = SettingsConfigDict(
        env_prefix="VENICE_PROXY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    signatures: SignaturesSettings = Field(default_factory=SignaturesSettings)
    tools: ToolsSettings = Field(default_factory=ToolsSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: CLI overrides > environment > TOML file > defaults. No .env, no secrets dir.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _describe(error: Mapping[str, Any]) -> str:
    parts = tuple(error.get("loc", ()))
    location = ".".join(str(part) for part in parts)
    message = str(error.get("msg", "invalid value"))
    value = error.get("input")
    # A client API key is never shown, nor one item of the list (``server.api_keys.0``).
    shown = "" if isinstance(value, dict | list) or "api_keys" in parts else f" (got {value!r})"
    return f"{location or 'settings'}: {message}{shown}"


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings once. ``config_file`` wins over ``VENICE_PROXY_CONFIG``.

    Raises :class:`SettingsError` with one line naming the offending key.
    """
    env = os.environ if environ is None else environ
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    settings_cls: type[Settings] = Settings
    if path is not None:
        settings_cls = type(
            "FileSettings",
            (Settings,),
            {"model_config": {**Settings.model_config, "toml_file": path}},
        )
    try:
        return settings_cls(**dict(overrides or {}))
    except ValidationError as exc:
        raise SettingsError("invalid setting " + _describe(exc.errors()[0])) from None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read settings: {exc}") from None


def resolve_api_key(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> SecretStr | None:
    """The Venice API key from ``VENICE_API_KEY``, else from ``upstream.api_key_file``."""
    env = os.environ if environ is None else environ
    value = env.get(API_KEY_ENV, "").strip()
    if value:
        return SecretStr(value)
    key_file = settings.upstream.api_key_file
    if key_file is None:
        return None
    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"upstream.api_key_file: cannot read {key_file}: {exc.strerror}"
        ) from None
    if not text:
        raise SettingsError(f"upstream.api_key_file: {key_file} is empty")
    return SecretStr(text)


def weakenings(settings: Settings, *, state_persisted: bool = True) -> list[tuple[str, str]]:
    """Every setting that weakens what an attestation proves: ``(log event, what it means)``.

    Pure: ``serve`` logs each as a warning at start-up, ``verify`` prints them and the status
    page shows them, so a weaker trust level never passes silently.
    """
    from proxy.attestation import DEFAULT_ALLOWED_TCB_STATUS

    section = settings.attestation
    found: list[tuple[str, str]] = []

    def add(event: str, detail: str) -> None:
        found.append((event, "WEAKENED: " + detail))

    if section.dcap == "off":
        add(
            "dcap_off",
            "attestation.dcap = off: TDX quote signatures are NOT verified, so any machine "
            "can pose as an enclave",
        )
    if section.nvidia == "nonce":
        add("nras_off", "attestation.nvidia = nonce: GPU evidence is NOT verified by NVIDIA NRAS")
    elif section.nvidia == "off":
        add("nvidia_off", "attestation.nvidia = off: GPU evidence is NOT checked at all")
    if section.software == "off":
        add(
            "software_off",
            "attestation.software = off: event-log replay, compose binding, dev-image and "
            "pinned-image checks only inform",
        )
    if section.allow_dev_image:
        add(
            "dev_images_allowed",
            "attestation.allow_dev_image = true: dstack dev images (operator login possible) "
            "are accepted",
        )
    if section.allow_unpinned_images:
        add(
            "unpinned_images_allowed",
            "attestation.allow_unpinned_images = true: a compose whose images are not pinned "
            "by digest is accepted",
        )
    extra = sorted(set(section.allowed_tcb_status) - DEFAULT_ALLOWED_TCB_STATUS)
    if extra:
        add(
            "tcb_status_weakened",
            f"attestation.allowed_tcb_status accepts {', '.join(extra)}: platforms with known "
            "unpatched TCB issues are accepted",
        )
    if section.gateway_models == "allow":
        add(
            "gateway_models_allowed",
            'attestation.gateway_models = "allow": models whose attestation covers only '
            "Venice's gateway (not the host that reads the prompt) are used",
        )
    gateway_models = sorted(m for m, level in section.trust_levels.items() if level == "gateway")
    if gateway_models:
        add(
            "gateway_trust_accepted",
            f"attestation.trust_levels accepts gateway trust for {', '.join(gateway_models)}",
        )
    if section.extra_mrseam or section.extra_mrtd:
        add(
            "measurement_policy_extended",
            f"attestation.extra_mrseam/extra_mrtd accept {len(section.extra_mrseam)} TDX "
            f"module and {len(section.extra_mrtd)} firmware values beyond the shipped policy",
        )
    if section.gateway_kms_roots or section.gateway_app_ids:
        add(
            "gateway_anchors_replaced",
            "attestation.gateway_kms_roots/gateway_app_ids replace the shipped gateway anchors",
        )
    if not state_persisted:
        add(
            "trust_state_in_memory",
            "trust levels are remembered in memory only (attestation.state_dir is not "
            "writable): a downgrade from enclave to gateway across restarts is not caught",
        )
    if settings.signatures.mode == "off":
        add("signatures_off", "signatures.mode = off: answers' enclave signatures are not checked")
    return found
