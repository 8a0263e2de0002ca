"""Which layer each module of an adapter file applies to: the one matching loading and ``check`` share.

A file applies to every layer it names that exists in the model, not only to the layers its
type would adapt when training: LyCORIS files, for one, also adapt ``conv_in``,
``conv_out`` and the time embedding. :func:`loadable_targets` therefore lists the type's
usual targets first, then every other Linear/Conv2d layer. :class:`ModuleMatcher` turns one
module of a file into an adapter module loaded with its tensors, or into the keys that load
nowhere with the reason; a module carrying a feature no installed type implements
(:mod:`adapters_core.features`) stops everything instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapters_core.errors import FormatError, ShapeMismatchError
from adapters_core.features import refuse_features
from adapters_core.keys import normalize_module_name
from adapters_core.module import load_module_tensors
from adapters_core.options import resolve_options
from adapters_core.plugins import Registry
from adapters_core.targets import (
    Target,
    kohya_name,
    layer_kind,
    model_targets,
)
from adapters_core.types import ModuleSpec

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

LDM_PARTS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")


class UnmatchedKeysError(FormatError):
    """Keys of an adapter file that load nowhere, while ``--allow_unmatched`` was not given."""


def loadable_targets(family: ModelFamily, components: Mapping[str, nn.Module | None]) -> list[Target]:
    """Every Linear/Conv2d layer a file may adapt: the adapter targets (3x3 convs included)
    first, then the model's other Linear/Conv2d layers (``conv_in``, ``time_embedding...``)."""
    found = model_targets(family, components, include_conv_blocks=True)
    names = {target.name for target in found}
    for part in family.components:
        root = components.get(part.name)
        if root is None:
            continue
        is_text = part.role == "text_encoder"
        for path, layer in root.named_modules():
            kind = layer_kind(layer)
            if kind is None:
                continue
            name = kohya_name(part.kohya_prefix, family.module_path_for_name(part, path))
            if name in names:
                continue
            names.add(name)
            index = -1 if is_text else family.blocks.index(name)
            found.append(Target(name, layer, part.name, index, kind, False, path, part.role))
    return found


def detect_file_network(
    registry: Registry, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], source: object
) -> str:
    """The installed type that reads this file; a file no type reads is refused with the
    feature it carries (DoRA, LoKr, ...) or, failing that, a sample of its keys."""
    network = registry.detect(tensors, metadata)
    if network is not None:
        return network
    for key in sorted(tensors):
        name, _, rest = key.partition(".")
        refuse_features(source, name, [rest])
    sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
    raise FormatError(f"{source}: no installed network type recognises its keys (e.g. {sample})")


@dataclass
class ModuleMatch:
    """One module of a file, loaded into a fresh adapter module for its layer."""

    raw_name: str
    target: Target
    spec: ModuleSpec
    module: nn.Module
    keys: int
    reshaped: bool  # 2-D file tensors for a conv layer or 4-D ones for a Linear


@dataclass
class KeyMiss:
    """A key of the file that loads nowhere, and why."""

    key: str
    name: str  # the module's standard kohya name
    reason: str
    shape_error: bool = False  # the layer exists but the tensors do not fit it


class ModuleMatcher:
    """Matches the modules of one file, read as ``network``, against the layers of one model.

    ``layers`` maps standard kohya names to targets (:func:`loadable_targets`), ``aliases``
    the LDM spellings of U-Net names (:func:`adapters_core.keys.ldm_unet_aliases`).
    """

    def __init__(
        self,
        registry: Registry,
        network: str,
        family: ModelFamily,
        layers: Mapping[str, Target],
        aliases: Mapping[str, str],
        model_name: str,
        source: object,
    ) -> None:
        self.registry = registry
        self.network = network
        self.family = family
        self.layers = layers
        self.aliases = aliases
        self.model_name = model_name
        self.source = source
        self.options = resolve_options(registry.get(network), {})

    def _no_layer_reason(self, raw_name: str, name: str) -> str:
        hint = self.family.foreign_module_hint(raw_name)
        if hint is not None:
            return hint
        prefixes = [part.kohya_prefix + "_" for part in reversed(self.family.components)]
        if not raw_name.startswith(tuple(prefixes)):
            return f"unknown prefix; expected {', '.join(prefixes[:-1])} or {prefixes[-1]}"
        if raw_name.startswith(LDM_PARTS) and name == raw_name:
            return f"LDM-style name that maps to no layer of {self.model_name}"
        close = difflib.get_close_matches(name, list(self.layers), n=1, cutoff=0.8)
        hint = f" (closest: {close[0]})" if close else ""
        return f"no such layer in {self.model_name}{hint}"

    def match(self, raw_name: str, parts: Mapping[str, torch.Tensor]) -> tuple[ModuleMatch | None, list[KeyMiss]]:
        """The loaded module of ``raw_name`` (or ``None``) and the keys that load nowhere."""
        name = normalize_module_name(raw_name, self.aliases)

        def miss(keys: Iterable[str], reason: str, shape_error: bool = False) -> list[KeyMiss]:
            return [KeyMiss(f"{raw_name}.{key}", name, reason, shape_error) for key in sorted(keys)]

        target = self.layers.get(name)
        if target is None:
            return None, miss(parts, self._no_layer_reason(raw_name, name))
        per_module = self.registry.module_options_from_tensors(self.network, name, parts)
        if per_module is None:
            refuse_features(self.source, raw_name, parts)
            return None, miss(parts, f"not a {self.network} module (keys: {', '.join(sorted(parts))})")
        spec = module_spec(name, target, per_module, self.options)
        suffixes = set(self.registry.state_dict_keys(self.network, spec))
        unknown = set(parts) - suffixes
        refuse_features(self.source, raw_name, unknown)
        misses = miss(unknown, f"unknown suffix for {self.network} (expected {', '.join(sorted(suffixes))})")
        module = self.registry.create_module(self.network, spec)
        if module is None:
            return None, miss(parts, f"{self.network} does not adapt {target.layer_kind} layers")
        known = {key: tensor for key, tensor in parts.items() if key in suffixes}
        try:
            load_module_tensors(module, f"{self.source}: {raw_name}", known)
        except ShapeMismatchError as error:
            return None, misses + miss(known, str(error), shape_error=True)
        own = module.state_dict()
        reshaped = any(tensor.dim() != own[key].dim() for key, tensor in known.items())
        return ModuleMatch(raw_name, target, spec, module, len(known), reshaped), misses


def module_spec(
    name: str, target: Target, per_module: Mapping[str, Any], options: Mapping[str, Any]
) -> ModuleSpec:
    """The spec of a module read from a file: rank and alpha from its tensors
    (``module_options_from_tensors``), the layer from ``target``; the other entries the type
    read are added to the network's ``options``."""
    extra = {key: value for key, value in per_module.items() if key not in ("dim", "alpha")}
    return ModuleSpec(name, target.layer, int(per_module["dim"]), per_module.get("alpha"), target.block_index,
                      target.layer_kind, target.in_conv_block, {**options, **extra})


def refuse_unmatched(source: object, misses: list[KeyMiss]) -> None:
    """Stop on keys that load nowhere with one line: the tensors that do not fit their layer
    (:class:`ShapeMismatchError`), else how many keys and the first with its reason."""
    if not misses:
        return
    for miss in misses:
        if miss.shape_error:
            raise ShapeMismatchError(miss.reason)
    first = misses[0]
    raise UnmatchedKeysError(
        f"{source}: {len(misses)} keys load nowhere (e.g. {first.key}: {first.reason}); "
        "`adapt check` lists them, --allow_unmatched applies the rest"
    )
