"""The plugin host: loads adapter types (entry-point group ``adapt.networks``) and model
families (group ``adapt.models``) into one plugin manager, and is the one place that calls
their hooks.

Built-in types and families are loaded exactly like third-party ones. Any validation failure (a hook
with a wrong signature, a misspelled hook, two types with one name, a type whose plugin
lacks a required hook) raises :class:`PluginError` with one line naming the plugin and its
distribution. The rest of adapt calls hooks through :class:`Registry`'s typed methods
(``create_module``, ``delta_weight``, ``merge_weights``, ``extract``, ``detect`` ...), which
ask only the plugin that registered the type, then the core's ``trylast`` defaults
(:class:`CoreDefaults`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from adapters_core import hookspecs
from adapters_core.errors import PluginError, UnknownModelFamilyError, UnknownNetworkError
from adapters_core.family import ModelFamily
from adapters_core.types import ModuleSpec, NetworkType

if TYPE_CHECKING:
    import torch

    from adapters_core.module import AdapterModule

ENTRY_POINT_GROUP = "adapt.networks"
MODELS_ENTRY_POINT_GROUP = "adapt.models"
ENTRY_POINT_GROUPS = (ENTRY_POINT_GROUP, MODELS_ENTRY_POINT_GROUP)
CORE_PLUGIN = "adapt.core"  # the name the core's default plugin is registered under
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
    """The loaded plugins, the network types they registered, and the one typed layer that
    calls their hooks.

    Per-type hooks are called on the plugin that registered the type (and on the core's
    ``trylast`` defaults, :class:`CoreDefaults`), never on the others; a hook that must
    answer and does not raises :class:`PluginError` naming the plugin. No code outside this
    class calls a hook.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._core = CoreDefaults(self)
        self.pm.register(self._core, name=CORE_PLUGIN)
        self.plugins: list[LoadedPlugin] = []
        self.types: dict[str, NetworkType] = {}
        self._aliases: dict[str, str] = {}
        self._origins: dict[str, LoadedPlugin] = {}
        self._owners: dict[str, object] = {}  # type name -> the plugin object that registered it
        self._callers: dict[tuple[str, str, bool], Any] = {}  # (hook, type, with defaults) -> caller
        self.families: dict[str, ModelFamily] = {}
        self.family_origins: dict[str, LoadedPlugin] = {}

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
        registered: list[NetworkType] = []
        impl = getattr(module, "register_networks", None)
        if impl is not None:
            impl(register=registered.append)
        families: list[ModelFamily] = []
        families_impl = getattr(module, "register_model_families", None)
        if families_impl is not None:
            families_impl(register=families.append)
        try:
            for network_type in registered:
                self._check_type(module, origin, network_type)
                self._add_type(module, origin, network_type)
            for family in families:
                self._add_family(origin, family)
        except PluginError:
            self._forget(module, registered, families, origin)
            raise
        self.plugins.append(origin)
        self._callers.clear()

    def _forget(
        self, module: object, registered: list[NetworkType], families: list[ModelFamily], origin: LoadedPlugin
    ) -> None:
        """Undo a plugin that failed validation, so the registry stays usable."""
        self.pm.unregister(module)
        for family in families:
            if self.family_origins.get(family.name) is origin:
                del self.families[family.name], self.family_origins[family.name]
        for network_type in registered:
            if self._owners.get(network_type.name) is module:
                del self.types[network_type.name], self._origins[network_type.name], self._owners[network_type.name]
                for alias in network_type.aliases:
                    self._aliases.pop(alias, None)

    def _check_type(self, module: object, origin: LoadedPlugin, network_type: NetworkType) -> None:
        for name in (network_type.name, *network_type.aliases):
            existing = self._owner(name)
            if existing is not None:
                raise PluginError(
                    f"network type '{name}' is registered twice: by {self._origins[existing.name].describe()} "
                    f"and by {origin.describe()}"
                )
        missing = [
            hook for hook in hookspecs.REQUIRED_HOOKS
            if not any(impl.plugin is module for impl in getattr(self.pm.hook, hook).get_hookimpls())
        ]
        if missing:
            raise PluginError(
                f"{origin.describe()}: network type '{network_type.name}' lacks the required "
                f"hook{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            )

    def _add_type(self, module: object, origin: LoadedPlugin, network_type: NetworkType) -> None:
        stamped = replace(network_type, distribution=origin.distribution, version=origin.version)
        self.types[network_type.name] = stamped
        self._origins[network_type.name] = origin
        self._owners[network_type.name] = module
        for alias in network_type.aliases:
            self._aliases[alias] = network_type.name

    def _add_family(self, origin: LoadedPlugin, family: ModelFamily) -> None:
        if not isinstance(family, ModelFamily) or not family.name:
            raise PluginError(f"{origin.describe()}: registered {family!r}; expected a named ModelFamily instance")
        if family.name in self.families:
            raise PluginError(
                f"model family '{family.name}' is registered twice: by "
                f"{self.family_origins[family.name].describe()} and by {origin.describe()}"
            )
        self.families[family.name] = family
        self.family_origins[family.name] = origin

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

    def origin(self, network: str) -> LoadedPlugin:
        """Where the plugin that registered type ``network`` came from."""
        return self._origins[self.get(network).name]

    # -- the typed layer ------------------------------------------------------------------
    def _call(self, hook: str, network: str, *, defaults: bool = True, **kwargs: Any) -> Any:
        """Call ``hook`` on the plugin owning ``network`` (then on the core's defaults)."""
        name = self.get(network).name
        caller = self._callers.get((hook, name, defaults))
        if caller is None:
            keep = {id(self._owners[name])} | ({id(self._core)} if defaults else set())
            others = [plugin for plugin in self.pm.get_plugins() if id(plugin) not in keep]
            caller = self._callers[(hook, name, defaults)] = self.pm.subset_hook_caller(hook, others)
        return caller(network=name, **kwargs)

    def _answer(self, hook: str, network: str, **kwargs: Any) -> Any:
        """:meth:`_call` for a hook that must answer: ``None`` is the plugin's fault."""
        result = self._call(hook, network, **kwargs)
        if result is None:
            raise PluginError(f"{self.origin(network).describe()}: hook '{hook}' gave no answer for type '{network}'")
        return result

    def create_module(self, network: str, spec: ModuleSpec) -> AdapterModule | None:
        """The type's adapter module for ``spec.layer``, or ``None`` if it does not adapt that layer."""
        from adapters_core.module import AdapterModule  # torch only when a module is made

        module = self._call("create_module", network, spec=spec)
        if module is not None and not isinstance(module, AdapterModule):
            raise PluginError(
                f"{self.origin(network).describe()}: create_module returned {type(module).__name__}, "
                "not an adapters_core.module.AdapterModule"
            )
        return module

    def state_dict_keys(self, network: str, spec: ModuleSpec) -> list[str]:
        """The module-relative keys the module for ``spec`` writes."""
        return list(self._answer("state_dict_keys", network, spec=spec))

    def delta_weight(self, network: str, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
        """The delta one module adds to its layer's weight at multiplier 1, in memory of the
        caller's own (an answer that shares memory with ``tensors`` is copied)."""
        delta = self._answer("delta_weight", network, tensors=tensors, weight_shape=weight_shape)
        storage = delta.untyped_storage().data_ptr()
        if any(tensor.untyped_storage().data_ptr() == storage for tensor in tensors.values()):
            delta = delta.clone()
        return delta

    def merge_weights(
        self, network: str, tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, ratio: float
    ) -> torch.Tensor:
        """``weight`` with one module merged at ``ratio`` (default: ``weight + ratio * delta``)."""
        return self._answer("merge_weights", network, tensors=tensors, weight=weight, ratio=ratio)

    def extract(
        self, network: str, delta: torch.Tensor, rank: int, options: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Module tensors of type ``network`` that approximate ``delta`` at ``rank``."""
        return dict(self._answer("extract", network, delta=delta, rank=rank, options=options))

    def module_options_from_tensors(
        self, network: str, name: str, tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, Any] | None:
        """``{"dim", "alpha", ...}`` of a saved module, or ``None`` if its tensors are not this type's."""
        options = self._call("module_options_from_tensors", network, name=name, tensors=tensors)
        return None if options is None else dict(options)

    def detect(self, keys: Iterable[str], metadata: Mapping[str, str]) -> str | None:
        """The type that wrote a file with ``keys`` and ``metadata``: the type its metadata
        names if that type claims the file, else the first ``detect_network`` answer (LoRA's
        catch-all is asked last)."""
        key_set = frozenset(keys)
        named = self._type_named_by(metadata)
        if named is not None:
            owner = self._owners[named.name]
            impls = [impl for impl in self.pm.hook.detect_network.get_hookimpls() if impl.plugin is owner]
            if not impls:
                return named.name  # a plugin without a detector trusts the metadata
            if self._call("detect_network", named.name, defaults=False, keys=key_set, metadata=metadata) == named.name:
                return named.name
        found = self.pm.hook.detect_network(keys=key_set, metadata=metadata)
        return None if found is None else str(found)

    def _type_named_by(self, metadata: Mapping[str, str]) -> NetworkType | None:
        module = metadata.get("ss_network_module")
        if module:
            try:
                return self.get(module)
            except UnknownNetworkError:
                return None
        architecture = metadata.get("modelspec.architecture", "")
        return self._owner(architecture.rpartition("/")[2]) if "/" in architecture else None


class CoreDefaults:
    """The core's own plugin: answers a hook when the owning plugin gives no answer."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @hookimpl(trylast=True)
    def merge_weights(
        self, network: str, tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, ratio: float
    ) -> torch.Tensor:
        from adapters_core.module import merge_additive

        return merge_additive(weight, self.registry.delta_weight(network, tensors, weight.shape), ratio, scratch=True)


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
