"""The plugin host: loads adapter types (entry-point group ``adapt.networks``) and model
families (group ``adapt.models``) into one plugin manager.

Built-in types and families are loaded exactly like third-party ones. Any validation failure (a hook
with a wrong signature, a misspelled hook, two types with one name) raises
:class:`PluginError` with one line naming the plugin and its distribution.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from adapters_core import hookspecs
from adapters_core.errors import PluginError, UnknownModelFamilyError, UnknownNetworkError
from adapters_core.family import ModelFamily
from adapters_core.types import NetworkType

ENTRY_POINT_GROUP = "adapt.networks"
MODELS_ENTRY_POINT_GROUP = "adapt.models"
ENTRY_POINT_GROUPS = (ENTRY_POINT_GROUP, MODELS_ENTRY_POINT_GROUP)
hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)


@dataclass(frozen=True)
class LoadedPlugin:
    """Where a plugin came from, for messages and ``adapt networks``."""

    entry_point: str
    module: str
    distribution: str
    version: str

    def describe(self) -> str:
        return f"plugin '{self.entry_point}' ({self.module}) from distribution {self.distribution} {self.version}"


class Registry:
    """The loaded plugins, their hooks and the network types they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[LoadedPlugin] = []
        self.types: dict[str, NetworkType] = {}
        self._aliases: dict[str, str] = {}
        self._origins: dict[str, LoadedPlugin] = {}
        self.families: dict[str, ModelFamily] = {}
        self.family_origins: dict[str, LoadedPlugin] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def add_plugin(self, module: ModuleType | object, origin: LoadedPlugin) -> None:
        """Register one plugin object, validate its hooks and collect its network types."""
        try:
            self.pm.register(module, name=origin.entry_point)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            reason = str(exc).splitlines()[0]
            raise PluginError(f"{origin.describe()}: {reason}") from None
        except ValueError as exc:
            raise PluginError(f"{origin.describe()}: {exc}") from None
        self.plugins.append(origin)
        impl = getattr(module, "register_networks", None)
        if impl is not None:
            impl(register=functools.partial(self._register_type, origin))
        families_impl = getattr(module, "register_model_families", None)
        if families_impl is not None:
            families_impl(register=functools.partial(self._register_family, origin))

    def _register_family(self, origin: LoadedPlugin, family: ModelFamily) -> None:
        if not isinstance(family, ModelFamily) or not family.name:
            raise PluginError(f"{origin.describe()}: registered {family!r}; expected a named ModelFamily instance")
        if family.name in self.families:
            raise PluginError(
                f"model family '{family.name}' is registered twice: by "
                f"{self.family_origins[family.name].describe()} and by {origin.describe()}"
            )
        self.families[family.name] = family
        self.family_origins[family.name] = origin

    def _register_type(self, origin: LoadedPlugin, network_type: NetworkType) -> None:
        stamped = replace(network_type, distribution=origin.distribution, version=origin.version)
        for name in (network_type.name, *network_type.aliases):
            existing = self._owner(name)
            if existing is not None:
                raise PluginError(
                    f"network type '{name}' is registered twice: by {self._origins[existing.name].describe()} "
                    f"and by {origin.describe()}"
                )
        self.types[network_type.name] = stamped
        self._origins[network_type.name] = origin
        for alias in network_type.aliases:
            self._aliases[alias] = network_type.name

    def _owner(self, name: str) -> NetworkType | None:
        if name in self.types:
            return self.types[name]
        if name in self._aliases:
            return self.types[self._aliases[name]]
        return None

    def get(self, name: str) -> NetworkType:
        """The type named ``name`` (or an alias, or a kohya module such as ``networks.lora``)."""
        found = self._owner(name)
        if found is None:
            # Several types may write one kohya module (lora and c3lier both write networks.lora):
            # the type named like the module's last part wins.
            writers = [t for t in self.types.values() if t.kohya_module == name]
            found = next((t for t in writers if t.name == name.rsplit(".", 1)[-1]), writers[0] if writers else None)
        if found is None:
            known = ", ".join(sorted(self.types)) or "none installed"
            raise UnknownNetworkError(f"unknown network type '{name}'; installed types: {known}")
        return found


    def family(self, name: str) -> ModelFamily:
        """The model family named ``name``."""
        if name not in self.families:
            known = ", ".join(self.families) or "none installed"
            raise UnknownModelFamilyError(f"unknown model family '{name}'; installed families: {known}")
        return self.families[name]

    def family_for_components(self, names: Iterable[str]) -> ModelFamily:
        """The family that names components ``names`` (``unet``, ``text_encoder``): one with exactly
        these components first, else the one with the fewest more; registration order breaks ties."""
        wanted = set(names)
        fitting = [f for f in self.families.values() if wanted <= {c.name for c in f.components}]
        if not fitting:
            known = ", ".join(f"{f.name} ({', '.join(c.name for c in f.components)})" for f in self.families.values())
            raise UnknownModelFamilyError(f"no installed model family has the components {sorted(wanted)}; {known}")
        return min(fitting, key=lambda f: len(f.components) - len(wanted))

    def family_for_v2_flag(self, v2: bool | None) -> str | None:
        """kohya's ``--v2`` resolved at the edge: the first family that is SD 2.x-like
        (``kohya_v2``); without the flag ``None`` (the model's family is detected)."""
        if not v2:
            return None
        for family in self.families.values():
            if family.kohya_v2:
                return family.name
        raise UnknownModelFamilyError("--v2: no installed model family is an SD 2.x family")

    def family_of_pipeline(self, pipe: object) -> ModelFamily:
        """The family of a Diffusers pipeline object (Python API)."""
        for family in self.families.values():
            if family.owns_pipeline(pipe):
                return family
        known = ", ".join(self.families) or "none installed"
        raise UnknownModelFamilyError(
            f"{type(pipe).__name__}: no installed model family owns this pipeline; installed families: {known}"
        )


def _origin(ep: EntryPoint) -> LoadedPlugin:
    dist = getattr(ep, "dist", None)
    return LoadedPlugin(
        entry_point=ep.name,
        module=ep.value,
        distribution=dist.name if dist is not None else "unknown",
        version=dist.version if dist is not None else "",
    )


def load_registry() -> Registry:
    """Build a registry from every entry point of the ``adapt.networks`` and ``adapt.models``
    groups (each group in entry-point name order: families register in that order, which is
    the order detection asks them in)."""
    registry = Registry()
    found = [ep for group in ENTRY_POINT_GROUPS for ep in sorted(entry_points(group=group), key=lambda e: e.name)]
    for ep in found:
        origin = _origin(ep)
        try:
            module = ep.load()
        except Exception as exc:  # an import error inside a third-party plugin
            raise PluginError(f"{origin.describe()}: cannot be imported: {exc}") from None
        registry.add_plugin(module, origin)
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (tests that fake entry points call this)."""
    global _registry
    _registry = None
