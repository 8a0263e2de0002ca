"""Value types shared by the core and the plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetworkOption:
    """One ``--network_args`` option of a type: its name, Python type, default and help."""

    name: str
    type: type
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class NetworkType:
    """An adapter type as a plugin registers it.

    ``kohya_module`` is what files record in ``ss_network_module`` (``networks.lora``).
    ``prepare_options`` validates the parsed options and fills type-specific defaults; it
    raises :class:`adapters_core.errors.NetworkOptionError` for bad combinations.
    """

    name: str
    description: str
    options: tuple[NetworkOption, ...] = ()
    kohya_module: str = ""
    aliases: tuple[str, ...] = ()
    prepare_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Filled in by the host on registration, not by the plugin.
    distribution: str = field(default="", compare=False)
    version: str = field(default="", compare=False)

    def option_defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}


OptionsMapping = Mapping[str, Any]
