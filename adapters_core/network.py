"""A Network: the adapter modules of one type attached to a U-Net and/or text encoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapters_core.blocks import BlockFactors, BlockMultipliers, RankPlan
from adapters_core.errors import NonFiniteError
from adapters_core.finite import all_finite
from adapters_core.matching import (
    KeyMiss,
    ModuleMatcher,
    detect_file_network,
    loadable_targets,
    refuse_unmatched,
)
from adapters_core.module import AdapterModule
from adapters_core.options import resolve_options
from adapters_core.patching import attach, detach
from adapters_core.plugins import Registry, get_registry
from adapters_core.targets import Target, layer_weight, model_targets
from adapters_core.types import ModuleSpec, NetworkType

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

Components = Mapping[str, "nn.Module | None"]


def resolve_model(
    registry: Registry,
    model: Any = None,
    family: ModelFamily | str | None = None,
    components: Components | None = None,
    unet: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
) -> tuple[ModelFamily, dict[str, nn.Module | None]]:
    """The family and components a network attaches to.

    ``model`` is a loaded model (:class:`~adapters_core.models.SDModel`: its family and
    components) or a Diffusers pipeline (its family is found by the installed families);
    otherwise ``components`` by name, to which ``unet=``/``text_encoder=`` add, and the
    family named (or the one these component names fit).
    """
    parts: dict[str, nn.Module | None] = {}
    found: ModelFamily | None = None
    if model is not None:
        model_family = getattr(model, "family", None)
        found = model_family if model_family is not None else registry.family_of_pipeline(model)
        parts.update(model.components if model_family is not None else found.pipeline_components(model))
    parts.update(components or {})
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        if module is not None:
            parts[name] = module
    if isinstance(family, str):
        found = registry.family(family)
    elif family is not None:
        found = family
    if found is None:
        found = registry.family_for_components(parts or {"unet"})
    return found, parts

log = logging.getLogger(__name__)


def split_module_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group file keys by module: ``name.lora_down.weight`` -> ``{name: {"lora_down.weight": t}}``."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, rest = key.partition(".")
        grouped.setdefault(name, {})[rest] = tensor
    return grouped


class Network(nn.Module):
    """Adapter modules of one type, keyed by their kohya names.

    The modules are children of the network (so ``state_dict()`` gives the file's keys),
    never of the base model. :meth:`apply` patches the layers' forwards, :meth:`merge_to`
    folds the deltas into the layers' weights.
    """

    def __init__(
        self, network_type: NetworkType, options: Mapping[str, Any], registry: Registry, family: ModelFamily
    ) -> None:
        super().__init__()
        self.network_type = network_type
        self.family = family
        self.options = dict(options)
        self.registry = registry
        self.targets: dict[str, Target] = {}
        self.applied = False
        self.unmatched_keys: list[str] = []
        self.multiplier = 1.0
        self.block_factors: BlockFactors | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        network: str,
        *,
        model: Any = None,
        family: ModelFamily | str | None = None,
        components: Components | None = None,
        unet: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        options: Mapping[str, Any] | None = None,
        multiplier: float = 1.0,
        registry: Registry | None = None,
    ) -> Network:
        """A fresh network of type ``network`` on a model's components (see :func:`resolve_model`;
        a component given as ``None`` is skipped)."""
        registry = registry or get_registry()
        found, parts = resolve_model(registry, model, family, components, unet, text_encoder)
        return cls._build(
            network,
            options,
            registry,
            found,
            multiplier,
            lambda plan: model_targets(found, parts, include_conv_blocks=plan.conv_enabled),
        )

    @classmethod
    def create_for_targets(
        cls,
        network: str,
        targets: Iterable[Target],
        *,
        options: Mapping[str, Any] | None = None,
        multiplier: float = 1.0,
        registry: Registry | None = None,
        family: ModelFamily | str | None = None,
    ) -> Network:
        """A fresh network on an explicit list of layers (the contract suite, custom models);
        ``family`` (default: the one with a U-Net and a text encoder) gives the block layout."""
        registry = registry or get_registry()
        found, _ = resolve_model(registry, family=family, components={"unet": None, "text_encoder": None})
        return cls._build(network, options, registry, found, multiplier, lambda _plan: targets)

    @classmethod
    def _build(
        cls,
        network: str,
        options: Mapping[str, Any] | None,
        registry: Registry,
        family: ModelFamily,
        multiplier: float,
        targets_for: Callable[[RankPlan], Iterable[Target]],
    ) -> Network:
        """Resolve the options, then add a module to every target the rank plan gives a rank."""
        network_type = registry.get(network)
        resolved = resolve_options(network_type, options or {})
        plan = RankPlan.from_options(resolved, family.blocks)
        self = cls(network_type, resolved, registry, family)
        for target in targets_for(plan):
            dim, alpha = plan.dim_alpha(target.block_index, target.layer_kind)
            if dim > 0:
                self._add(target, dim, alpha)
        self.set_multiplier(multiplier)
        return self

    @classmethod
    def from_weights(
        cls,
        tensors: Mapping[str, torch.Tensor],
        *,
        model: Any = None,
        family: ModelFamily | str | None = None,
        components: Components | None = None,
        unet: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        targets: Iterable[Target] | None = None,
        metadata: Mapping[str, str] | None = None,
        network: str | None = None,
        multiplier: float = 1.0,
        registry: Registry | None = None,
        source: str = "weights",
        allow_unmatched: bool = False,
    ) -> Network:
        """A network holding exactly the modules named in ``tensors``, with their weights loaded.

        Modules apply to every Linear/Conv2d layer of the model's components they name (see
        :func:`resolve_model`; or to ``targets``, when given instead), matched as ``adapt check`` matches them
        (:class:`~adapters_core.matching.ModuleMatcher`). Keys that load nowhere raise
        :class:`~adapters_core.matching.UnmatchedKeysError` unless ``allow_unmatched``; then
        they are logged and kept in :attr:`unmatched_keys`.
        """
        registry = registry or get_registry()
        if network is None:
            network = detect_file_network(registry, tensors, metadata or {}, source)
        network_type = registry.get(network)
        found, parts = resolve_model(registry, model, family, components, unet, text_encoder)
        self = cls(network_type, resolve_options(network_type, {}), registry, found)
        layers = list(targets) if targets is not None else loadable_targets(found, parts)
        candidates = {t.name: t for t in layers}
        aliases = found.module_aliases(parts, candidates.values())
        matcher = ModuleMatcher(registry, network_type.name, found, candidates, aliases, "the model", source)
        misses: list[KeyMiss] = []
        for raw_name, module_tensors in split_module_keys(tensors).items():
            match, missed = matcher.match(raw_name, module_tensors)
            misses += missed
            if match is not None:
                self._attach(match.target, match.module)
        self.unmatched_keys = [miss.key for miss in misses]
        if not allow_unmatched:
            refuse_unmatched(source, misses)
        if misses:
            log.warning(
                "%s: %d keys load nowhere and were not applied: %s",
                source, len(misses), "; ".join(f"{miss.key} ({miss.reason})" for miss in misses),
            )
        self.set_multiplier(multiplier)
        return self

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        model: Any = None,
        family: ModelFamily | str | None = None,
        components: Components | None = None,
        unet: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        multiplier: float = 1.0,
        network: str | None = None,
        registry: Registry | None = None,
        allow_unmatched: bool = False,
    ) -> Network:
        """Load an adapter onto the given models: a kohya/LyCORIS file (safetensors, ckpt or
        pt), a diffusers LoRA or a PEFT adapter folder (see :mod:`adapters_core.interop.adapter_source`)."""
        from adapters_core.interop.adapter_source import read_adapter_file

        loaded = read_adapter_file(path)
        return cls.from_weights(
            loaded.tensors,
            model=model,
            family=family,
            components=components,
            unet=unet,
            text_encoder=text_encoder,
            metadata=loaded.metadata,
            network=network,
            multiplier=multiplier,
            registry=registry,
            source=str(path),
            allow_unmatched=allow_unmatched,
        )

    def _add(self, target: Target, rank: int, alpha: float | None) -> AdapterModule | None:
        spec = ModuleSpec(target.name, target.layer, rank, alpha, target.block_index, target.layer_kind,
                          target.in_conv_block, self.options)
        module = self.registry.create_module(self.network_type.name, spec)
        if module is None:
            return None
        self._attach(target, module)
        return module

    def _attach(self, target: Target, module: nn.Module) -> None:
        """Make ``module`` this network's adapter of ``target`` (on the layer's device)."""
        weight = getattr(target.layer, "weight", None)
        if weight is not None and weight.device.type != "meta":
            module.to(weight.device)
        self.add_module(target.name, module)
        self.targets[target.name] = target

    # -- access -------------------------------------------------------------------------
    def adapter_modules(self) -> Iterator[tuple[str, AdapterModule]]:
        for name, module in self.named_children():
            if isinstance(module, AdapterModule):
                yield name, module

    def component_modules(self, component: str) -> Iterator[tuple[str, AdapterModule]]:
        for name, module in self.adapter_modules():
            if self.targets[name].component == component:
                yield name, module

    def module_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A module's tensors with module-relative keys, as the per-type hooks take them."""
        return {key: value.detach() for key, value in getattr(self, name).state_dict().items()}

    # -- patching -----------------------------------------------------------------------
    def apply(self) -> Network:  # type: ignore[override]  # adapt's API: not nn.Module.apply(fn)
        """Patch every adapted layer so its output includes this network's contribution."""
        for name, module in self.adapter_modules():
            attach(self.targets[name].layer, module)
        self.applied = True
        return self

    def remove(self) -> Network:
        """Undo :meth:`apply`; the base model behaves as before."""
        for name, module in self.adapter_modules():
            detach(self.targets[name].layer, module)
        self.applied = False
        return self

    def set_multiplier(self, multiplier: float) -> None:
        """Every module's multiplier: ``multiplier`` times its block's factor, if any."""
        self.multiplier = float(multiplier)
        for name, module in self.adapter_modules():
            module.multiplier = self._module_ratio(name, self.multiplier)

    def set_block_multipliers(self, block_multipliers: BlockMultipliers | None) -> None:
        """Weight the modules per block (A1111's LoRA Block Weight) on the family's block
        layout; ``None`` removes the weights. A spec that does not fit the layout is one error."""
        self.block_factors = (
            None if block_multipliers is None else block_multipliers.factors(self.family.blocks, self.family.name)
        )
        self.set_multiplier(self.multiplier)

    def _module_ratio(self, name: str, ratio: float) -> float:
        if self.block_factors is None:
            return ratio
        return ratio * self.block_factors.factor(self.targets[name].block_index)

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        """Fold every module's delta into its layer's weight (at the current multiplier).

        Removes the patches first if the network was applied, so the delta is not counted
        twice. Raises :class:`ShapeMismatchError` before changing anything if a merged weight
        would not be finite.
        """
        ratio = self.multiplier if multiplier is None else float(multiplier)
        merged: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, _ in self.adapter_modules():
            layer = self.targets[name].layer
            new_weight = self.registry.merge_weights(
                self.network_type.name, self.module_tensors(name), layer_weight(layer), self._module_ratio(name, ratio)
            )
            if not all_finite(new_weight):
                raise NonFiniteError(f"{name}: merging gives non-finite weights; nothing was merged")
            merged.append((layer_weight(layer), new_weight))
        if self.applied:
            self.remove()
        for weight, new_weight in merged:
            weight.copy_(new_weight)

    # -- training -----------------------------------------------------------------------
    def on_train_step(self, step: int) -> None:
        """Before each training forward pass: every module's own per-step work (DyLoRA's rank unit)."""
        for _, module in self.adapter_modules():
            module.on_train_step(step)

    # -- saving -------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write the adapter file (kohya keys, metadata and hashes), atomically."""
        from adapters_core.formats import save_adapter

        save_adapter(path, self.state_dict(), metadata=metadata, dtype=dtype, overwrite=overwrite)
