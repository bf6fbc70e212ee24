"""Value objects of tool emulation: the settings view and the per-request plan. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from proxy.core.tools.conventions import Convention
from proxy.core.tools.validate import CompiledSchema, ToolSpec


class ToolsSettingsLike(Protocol):
    """What :meth:`ToolsConfig.from_settings` reads (``proxy.settings.ToolsSettings``)."""

    @property
    def mode(self) -> str: ...
    @property
    def repair_attempts(self) -> int: ...
    @property
    def conventions(self) -> Mapping[str, str]: ...
    @property
    def disabled_models(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ToolsConfig:
    """The ``[tools]`` settings as the core needs them."""

    mode: Literal["emulate", "refuse"] = "emulate"
    repair_attempts: int = 1
    conventions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    disabled_models: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: ToolsSettingsLike) -> ToolsConfig:
        """From ``Settings.tools`` (built once at the edge)."""
        mode: Literal["emulate", "refuse"] = "refuse" if settings.mode == "refuse" else "emulate"
        return cls(
            mode=mode,
            repair_attempts=settings.repair_attempts,
            conventions=MappingProxyType(dict(settings.conventions)),
            disabled_models=frozenset(settings.disabled_models),
        )


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``tool_choice`` read: ``auto``, ``none``, ``required`` or ``named`` (``name`` set);
    ``allowed`` narrows the callable tools (OpenAI's ``allowed_tools``)."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None
    allowed: tuple[str, ...] | None = None

    @property
    def must_call(self) -> bool:
        """Whether an answer without a call is a failure."""
        return self.mode in ("required", "named")


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """``response_format``: ``json_object`` or ``json_schema`` (with its compiled schema)."""

    kind: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: CompiledSchema | None = None
    strict: bool = False
    raw_schema: Mapping[str, Any] | None = None
    """The schema as the client wrote it (key order matters to a model writing JSON)."""


@dataclass(frozen=True, slots=True)
class EmulationPlan:
    """Everything needed to read one request's answers. Holds the client's tool definitions
    and schemas: keep it local, never log it."""

    convention: Convention
    tools: Mapping[str, ToolSpec]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    response: ResponseSpec | None
    repair_attempts: int
    stream: bool

    def __repr__(self) -> str:
        return (
            f"EmulationPlan(convention={self.convention.name!r}, tools={len(self.tools)}, "
            f"tool_choice={self.tool_choice.mode!r}, response="
            f"{self.response.kind if self.response else None!r})"
        )

    @property
    def calls_enabled(self) -> bool:
        """Whether answers are scanned for calls (tools declared, ``tool_choice`` not none)."""
        return bool(self.tools) and self.tool_choice.mode != "none"

    @property
    def callable_tools(self) -> Mapping[str, ToolSpec]:
        """The tools a call may name (all, the named one, or the allowed subset)."""
        choice = self.tool_choice
        if choice.mode == "named" and choice.name is not None:
            return {choice.name: self.tools[choice.name]}
        if choice.allowed is not None:
            return {name: self.tools[name] for name in choice.allowed}
        return self.tools

    @property
    def schemas(self) -> Mapping[str, Mapping[str, Any] | None]:
        """Parameter schemas by tool name (the scanner types XML/GLM values with them)."""
        return {name: spec.parameters for name, spec in self.tools.items()}
