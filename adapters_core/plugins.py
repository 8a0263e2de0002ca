"""The plugin host: loads adapter types from the ``adapt.networks`` entry-point group.

Built-in types are loaded exactly like third-party ones. Any validation failure (a hook
with a wrong signature, a misspelled hook, two types with one name) raises
:class:`PluginError` with one line naming the plugin and its distribution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from adapters_core import hookspecs
from adapters_core.errors import PluginError, UnknownNetworkError
from adapters_core.types import NetworkType

ENTRY_POINT_GROUP = "adapt.networks"
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


def _origin(ep: EntryPoint) -> LoadedPlugin:
    dist = getattr(ep, "dist", None)
    return LoadedPlugin(
        entry_point=ep.name,
        module=ep.value,
        distribution=dist.name if dist is not None else "unknown",
        version=dist.version if dist is not None else "",
    )


def load_registry() -> Registry:
    """Build a registry from every entry point of the ``adapt.networks`` group."""
    registry = Registry()
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
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
