"""A Network: the adapter modules of one type attached to a U-Net and/or text encoder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from adapters_core.blocks import BlockMultipliers, RankPlan
from adapters_core.errors import NonFiniteError
from adapters_core.keys import ldm_unet_aliases
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
from adapters_core.targets import Target, all_targets
from adapters_core.types import ModuleSpec, NetworkType

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

    def __init__(self, network_type: NetworkType, options: Mapping[str, Any], registry: Registry) -> None:
        super().__init__()
        self.network_type = network_type
        self.options = dict(options)
        self.registry = registry
        self.targets: dict[str, Target] = {}
        self.applied = False
        self.unmatched_keys: list[str] = []
        self.multiplier = 1.0
        self.block_multipliers: BlockMultipliers | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        network: str,
        *,
        unet: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        options: Mapping[str, Any] | None = None,
        multiplier: float = 1.0,
        registry: Registry | None = None,
    ) -> Network:
        """A fresh network of type ``network`` on the given models (pass ``None`` to skip one)."""
        return cls._build(
            network,
            options,
            registry,
            multiplier,
            lambda plan: all_targets(unet, text_encoder, include_conv_blocks=plan.conv_enabled),
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
    ) -> Network:
        """A fresh network on an explicit list of layers (the contract suite, custom models)."""
        return cls._build(network, options, registry, multiplier, lambda _plan: targets)

    @classmethod
    def _build(
        cls,
        network: str,
        options: Mapping[str, Any] | None,
        registry: Registry | None,
        multiplier: float,
        targets_for: Callable[[RankPlan], Iterable[Target]],
    ) -> Network:
        """Resolve the options, then add a module to every target the rank plan gives a rank."""
        registry = registry or get_registry()
        network_type = registry.get(network)
        resolved = resolve_options(network_type, options or {})
        plan = RankPlan.from_options(resolved)
        self = cls(network_type, resolved, registry)
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

        Modules apply to every Linear/Conv2d layer of the given models they name (or to
        ``targets``, when given instead of models), matched as ``adapt check`` matches them
        (:class:`~adapters_core.matching.ModuleMatcher`). Keys that load nowhere raise
        :class:`~adapters_core.matching.UnmatchedKeysError` unless ``allow_unmatched``; then
        they are logged and kept in :attr:`unmatched_keys`.
        """
        registry = registry or get_registry()
        if network is None:
            network = detect_file_network(registry, tensors, metadata or {}, source)
        network_type = registry.get(network)
        self = cls(network_type, resolve_options(network_type, {}), registry)
        layers = list(targets) if targets is not None else loadable_targets(unet, text_encoder)
        candidates = {t.name: t for t in layers}
        aliases = ldm_unet_aliases(unet, candidates.values())
        matcher = ModuleMatcher(registry, network_type.name, candidates, aliases, "the model", source)
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
        unet: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        multiplier: float = 1.0,
        network: str | None = None,
        registry: Registry | None = None,
        allow_unmatched: bool = False,
    ) -> Network:
        """Load an adapter onto the given models: a kohya/LyCORIS file (safetensors, ckpt or
        pt), a diffusers LoRA or a PEFT adapter folder (see :mod:`adapters_core.adapter_source`)."""
        from adapters_core.adapter_source import read_adapter_file

        loaded = read_adapter_file(path)
        return cls.from_weights(
            loaded.tensors,
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
    def apply(self) -> Network:
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
        """Weight the modules per block (A1111's LoRA Block Weight); ``None`` removes the weights."""
        self.block_multipliers = block_multipliers
        self.set_multiplier(self.multiplier)

    def _module_ratio(self, name: str, ratio: float) -> float:
        if self.block_multipliers is None:
            return ratio
        return ratio * self.block_multipliers.factor(self.targets[name].block_index)

    @torch.no_grad()
    def merge_to(self, multiplier: float | None = None) -> None:
        """Fold every module's delta into its layer's weight (at the current multiplier).

        Removes the patches first if the network was applied, so the delta is not counted
        twice. Raises :class:`ShapeMismatchError` before changing anything if a merged weight
        would not be finite.
        """
        ratio = self.multiplier if multiplier is None else float(multiplier)
        merged: list[tuple[nn.Module, torch.Tensor]] = []
        for name, _ in self.adapter_modules():
            layer = self.targets[name].layer
            new_weight = self.registry.merge_weights(
                self.network_type.name, self.module_tensors(name), layer.weight, self._module_ratio(name, ratio)
            )
            if not torch.isfinite(new_weight).all():
                raise NonFiniteError(f"{name}: merging gives non-finite weights; nothing was merged")
            merged.append((layer, new_weight))
        if self.applied:
            self.remove()
        for layer, new_weight in merged:
            layer.weight.copy_(new_weight)

    # -- training -----------------------------------------------------------------------
    def prepare_optimizer_params(
        self, text_encoder_lr: float | None, unet_lr: float | None, default_lr: float
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Optimizer parameter groups: text encoder, then U-Net (one group per block in block mode).

        Groups whose learning rate is 0 are dropped, as kohya does.
        """
        plan = RankPlan.from_options(self.options)
        groups: list[dict[str, Any]] = []
        descriptions: list[str] = []
        te_params = [p for _, m in self.component_modules("text_encoder") for p in m.parameters()]
        if te_params:
            groups.append({"params": te_params, "lr": text_encoder_lr or default_lr})
            descriptions.append("text_encoder")
        unet_modules = list(self.component_modules("unet"))
        base_lr = unet_lr or default_lr
        if plan.block_mode:
            by_block: dict[int, list[nn.Parameter]] = {}
            for name, module in unet_modules:
                by_block.setdefault(self.targets[name].block_index, []).extend(module.parameters())
            for block in sorted(by_block):
                lr = base_lr * plan.block_lr_weight(block)
                if lr > 0:
                    groups.append({"params": by_block[block], "lr": lr})
                    descriptions.append(f"unet block {block}")
        elif unet_modules:
            groups.append({"params": [p for _, m in unet_modules for p in m.parameters()], "lr": base_lr})
            descriptions.append("unet")
        return groups, descriptions

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
