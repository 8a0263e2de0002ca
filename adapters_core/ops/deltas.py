"""What the adapter tools share: modules of a file, deltas through the hooks, layer shapes.

Every tool reads adapters (any format :mod:`adapters_core.interop.adapter_source` reads) into :class:`Adapter` (modules keyed by their standard kohya
name, tensors module-relative, the type detected by ``detect_network``), works per module
through the hooks (``delta_weight``, ``merge_weights``, ``extract``,
``module_options_from_tensors``) and writes with :func:`write_adapter`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapters_core.blocks import BlockFactors, block_multipliers_per_file, module_ratio
from adapters_core.errors import ConfigError, FormatError, ShapeMismatchError
from adapters_core.features import refuse_features
from adapters_core.interop.adapter_source import read_adapter_file
from adapters_core.keys import normalize_module_name
from adapters_core.layer_table import bundled_layer_table
from adapters_core.lora_keys import resolve_alpha
from adapters_core.matching import detect_file_network, module_spec
from adapters_core.metadata import family_from_metadata
from adapters_core.network import split_module_keys
from adapters_core.ops.factors import factors_of
from adapters_core.plugins import get_registry
from adapters_core.progress import progress, progress_bar  # noqa: F401 (the ops import them from here)
from adapters_core.targets import Target

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

log = logging.getLogger("adapters_core.ops")

ModuleTensors = dict[str, torch.Tensor]
ShapeTable = Mapping[str, torch.Size]


@dataclass
class Adapter:
    """An adapter file by module: ``modules[standard kohya name] = module-relative tensors``."""

    path: Path
    network: str
    modules: dict[str, ModuleTensors]
    metadata: dict[str, str]
    source_format: str = "kohya"  # how the file stored them: kohya, diffusers or peft
    naming: ModelFamily | None = None  # the family whose module names it uses (:func:`naming_family`)
    block_factors: BlockFactors | None = None

    def ratio(self, ratio: float, name: str) -> float:
        """The ratio of module ``name`` after this file's block multipliers (``--block_weights``)."""
        return module_ratio(ratio, self.block_factors, name)

    @property
    def title(self) -> str:
        return self.metadata.get("modelspec.title") or self.path.stem

    @property
    def base(self) -> tuple[ModelFamily, bool]:
        """``(model family, v-prediction)`` the file was made for: its naming family
        (:func:`naming_family`: the metadata's, else the one its module names fit)."""
        family, v_prediction = family_from_metadata(self.metadata)
        return (self.naming or family), v_prediction


def _refuse_unread_features(network: str, name: str, tensors: ModuleTensors, source: object) -> None:
    """Stop on a module whose keys carry a feature (DoRA, Tucker, ...) its type does not read.

    These tools have no model, so the type is asked for its keys with a stand-in layer."""
    registry = get_registry()
    options = registry.module_options_from_tensors(network, name, tensors)
    if options is None:
        refuse_features(source, name, tensors)
        return
    spec = module_spec(name, _STAND_IN_TARGET, options, {})
    refuse_features(source, name, set(tensors) - set(registry.state_dict_keys(network, spec)))


_STAND_IN_TARGET = Target("stand_in", nn.Linear(1, 1, device="meta"), "unet", -1, "linear", in_conv_block=False)


def read_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Load an adapter in any format (:func:`read_adapter_file`), detect its type and group its
    tensors by (normalised) module name."""
    loaded = read_adapter_file(path)
    network = detect_file_network(get_registry(), loaded.tensors, loaded.metadata, path)
    modules: dict[str, ModuleTensors] = {}
    by_module = split_module_keys(loaded.tensors)
    naming = naming_family(loaded.metadata, by_module)
    aliases = bundled_module_aliases(naming.name)
    for raw_name, tensors in by_module.items():
        _refuse_unread_features(network, raw_name, tensors, path)
        name = normalize_module_name(raw_name, aliases)
        if name in modules:
            raise FormatError(f"{path}: module {raw_name} is stored twice (also under another spelling of {name})")
        modules[name] = tensors
    return Adapter(Path(path), network, modules, loaded.metadata, loaded.source_format, naming)


def read_adapters(paths: Sequence[str | os.PathLike[str]], block_weights: Sequence[str] = ()) -> list[Adapter]:
    """The adapter files, each with its block multipliers (one spec for all, or one per file)
    on the block layout of the family it was made for."""
    if not paths:
        raise ConfigError("--models: give at least one adapter file")
    weights = block_multipliers_per_file(block_weights, len(paths))
    adapters = [read_adapter(path) for path in paths]
    for adapter, multipliers in zip(adapters, weights, strict=True):
        if multipliers is not None and adapter.naming is not None:
            adapter.block_factors = multipliers.factors(adapter.naming.blocks, adapter.naming.name)
    return adapters


def resolve_ratios(count: int, ratios: Sequence[float] | None) -> list[float]:
    """One ratio per model (all 1.0 when none were given)."""
    if not ratios:
        return [1.0] * count
    if len(ratios) != count:
        raise ConfigError(f"--ratios: {len(ratios)} values for {count} --models; give one ratio per model")
    return [float(r) for r in ratios]


def union_names(adapters: Iterable[Adapter]) -> list[str]:
    """Every module name of the adapters, in order of first appearance."""
    return list(dict.fromkeys(name for adapter in adapters for name in adapter.modules))


def dim_alpha(network: str, name: str, tensors: Mapping[str, torch.Tensor]) -> tuple[int, float]:
    """A module's rank and effective alpha (None or 0 means alpha = rank, as kohya reads files)."""
    options = get_registry().module_options_from_tensors(network, name, tensors)
    if options is None:
        raise FormatError(
            f"{name}: network type '{network}' does not recognise its tensors ({', '.join(sorted(tensors))})"
        )
    dim = int(options["dim"])
    return dim, resolve_alpha(options.get("alpha"), dim)


def module_delta(
    network: str, tensors: Mapping[str, torch.Tensor], shape: torch.Size, name: str = "module"
) -> torch.Tensor:
    """The ``delta_weight`` hook in float32 (multiplier 1, the type's own scale included)."""
    try:
        delta = get_registry().delta_weight(network, tensors, shape)
    except KeyError as missing:
        raise FormatError(f"{name}: lacks the tensor {missing} that type '{network}' needs") from None
    return delta.float()


def extract_module(network: str, delta: torch.Tensor, rank: int, options: Mapping[str, Any]) -> ModuleTensors:
    """The ``extract`` hook: module tensors of type ``network`` approximating ``delta`` at ``rank``."""
    return get_registry().extract(network, delta, rank, options)


def is_conv3x3(shape: Sequence[int]) -> bool:
    """A conv weight with a kernel larger than 1x1 (C3Lier's conv_dim/conv_alpha apply)."""
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


# -- layer shapes -------------------------------------------------------------------------
def naming_family(metadata: Mapping[str, str], names: Iterable[str]) -> ModelFamily:
    """The family whose naming a file read without a model follows: the one its metadata
    names, else the first whose component prefixes cover every module name (``lora_te1_``
    is SDXL's) and whose bundled model has a layer for every one (a U-Net-only SDXL file's
    ``input_blocks_7_1_transformer_blocks_5`` is not SD's), else the first whose prefixes
    cover them, else SD 1.x's (:func:`family_from_metadata`)."""
    family, _ = family_from_metadata(metadata)
    if family.claims_metadata(metadata):
        return family
    names = list(names)
    candidates = [family, *get_registry().families.values()]
    covering = [c for c in candidates if names and all(name.startswith(_prefixes(c)) for name in names)]
    for candidate in covering:
        shapes, aliases = bundled_layer_shapes(candidate.name), bundled_module_aliases(candidate.name)
        if all(normalize_module_name(name, aliases) in shapes for name in names):
            return candidate
    return covering[0] if covering else family


def _prefixes(family: ModelFamily) -> tuple[str, ...]:
    """``lora_unet_``, ``lora_te_`` ...: the kohya prefixes of the family's components."""
    return tuple(f"{part.kohya_prefix}_" for part in family.components)


def bundled_module_aliases(family_name: str) -> Mapping[str, str]:
    """Other spellings of an installed family's module names (its bundled model's layer table)."""
    return bundled_layer_table(family_name).aliases


@functools.cache
def bundled_layer_shapes(family_name: str) -> dict[str, torch.Size]:
    """Layer shapes of an installed family's bundled model (its layer table)."""
    return {name: torch.Size(shape) for name, shape in bundled_layer_table(family_name).shapes.items()}


def _given(table: ShapeTable) -> ShapeTable:
    return table


class LayerShapes:
    """Finds the weight shape of the layer a module adapts, without knowing the type.

    Factor-based modules tell it from their factors. Otherwise the candidates are the
    given tables (a loaded model), then the bundled model of every installed family (the
    file's family first); the first shape the type's ``delta_weight`` accepts wins.
    """

    def __init__(self, tables: Sequence[ShapeTable] = (), *, family: ModelFamily | None = None) -> None:
        installed = list(get_registry().families)
        bundled = ([family.name] if family is not None else []) + [n for n in installed if family is None or n != family.name]
        self._tables: list[Callable[[], ShapeTable]] = [functools.partial(_given, table) for table in tables]
        self._tables += [functools.partial(bundled_layer_shapes, name) for name in bundled]

    def delta(self, network: str, name: str, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Size]:
        """``(delta, weight shape)`` of one module."""
        factors = factors_of(network, tensors, name)
        if factors is not None:
            return module_delta(network, tensors, factors.weight_shape, name), factors.weight_shape
        for table in self._tables:
            shape = table().get(name)
            if shape is None:
                continue
            try:
                delta = module_delta(network, tensors, shape, name)
            except (RuntimeError, ValueError, ShapeMismatchError):
                continue
            if delta.shape == shape:
                return delta, shape
        raise ShapeMismatchError(
            f"{name}: cannot tell the weight shape of its layer (no layer of that name in the installed model "
            f"families ({', '.join(get_registry().families)}) fits the tensors of type '{network}')"
        )
