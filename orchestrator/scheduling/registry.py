"""Plugins by type name, each built from its validated YAML parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class PluginParameters(BaseModel):
    """Base for a plugin's parameters: strict (an unknown key is a startup error, as in llm-d)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base for every scheduler plugin: a type name, an instance name, its parameters."""

    type_name: ClassVar[str]
    Parameters: ClassVar[type[PluginParameters]] = PluginParameters

    def __init__(self, name: str, parameters: PluginParameters) -> None:
        self.name = name
        self.parameters = parameters

    @classmethod
    def from_parameters(cls, name: str, raw: Mapping[str, Any]) -> Self:
        """Validate `raw` against this plugin's parameters (raises pydantic's error)."""
        return cls(name, cls.Parameters.model_validate(dict(raw)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.parameters!r})"


class PluginRegistry:
    """Type name → plugin class."""

    def __init__(self, plugins: Mapping[str, type[Plugin]] | None = None) -> None:
        self._plugins: dict[str, type[Plugin]] = dict(plugins or {})

    def register(self, plugin: type[Plugin], *aliases: str) -> None:
        for type_name in (plugin.type_name, *aliases):
            if type_name in self._plugins:
                raise ValueError(f"plugin type {type_name!r} registered twice")
            self._plugins[type_name] = plugin

    def get(self, type_name: str) -> type[Plugin] | None:
        return self._plugins.get(type_name)

    @property
    def type_names(self) -> list[str]:
        return sorted(self._plugins)
