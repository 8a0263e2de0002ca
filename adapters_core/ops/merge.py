"""``adapt merge`` without ``--sd_model``: several adapters into one adapter (kohya-format.md §6).

Two modes:

* **sum** (default; kohya's ``merge_lora.py`` rule, defined on the factors, so for
  factor-based types only). Per module the first model holding it gives ``alpha_base`` and
  the rank; with ``s_i = sqrt(alpha_i / alpha_base) * ratio_i``, ``down = sum s_i down_i``,
  ``up = sum |s_i| up_i``, ``alpha = alpha_base``. Ranks must match. The result is not
  ``sum ratio_i dW_i`` (the product has cross terms): it is kohya's blend.
* **concat**: the exact sum ``sum ratio_i dW_i``. Factor-based types stack the factors along
  the rank (rank = sum of ranks) with each term's scale folded into its ``up`` columns, so
  the written alpha (the first model's) gives the exact result in every reader. Other types
  sum their deltas and extract at the summed rank through their own ``extract`` hook.

``shuffle`` permutes the rank components (the delta is unchanged), as kohya's ``--shuffle``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from adapters_core.atomic import check_writable
from adapters_core.errors import ConfigError, ShapeMismatchError
from adapters_core.formats import precision_dtype
from adapters_core.ops.deltas import (
    Adapter,
    LayerShapes,
    ModuleTensors,
    dim_alpha,
    extract_module,
    log,
    progress,
    read_adapters,
    resolve_ratios,
    union_names,
)
from adapters_core.ops.factors import Factors, factor_tensors, factors_of, is_factor_based
from adapters_core.ops.outputs import ModuleOut, adapter_metadata, write_adapter

Term = tuple[Adapter, float, ModuleTensors]


def merge_adapters(
    models: Sequence[str | os.PathLike[str]],
    ratios: Sequence[float] | None = None,
    *,
    save_to: str | os.PathLike[str],
    concat: bool = False,
    shuffle: bool = False,
    precision: str = "float",
    save_precision: str | None = None,
    overwrite: bool = False,
    generator: torch.Generator | None = None,
    block_weights: Sequence[str] = (),
) -> Path:
    """Merge adapter files into one and write it to ``save_to``; returns the path written."""
    check_writable(save_to, overwrite)
    dtype = precision_dtype(save_precision or precision)
    adapters = read_adapters(models, block_weights)
    ratios = resolve_ratios(len(adapters), ratios)
    network = adapters[0].network
    factor_mode = all(is_factor_based(a.network) for a in adapters)
    if not factor_mode and not concat:
        other = next(a for a in adapters if not is_factor_based(a.network))
        raise ConfigError(
            f"{other.path}: type '{other.network}' does not store lora_down/lora_up factors, on which kohya's "
            "merge rule is defined; use --concat (exact sum) or `adapt svd-merge`"
        )
    if shuffle and not factor_mode:
        log.warning("--shuffle applies to factor-based types only; ignored for type '%s'", network)
    shapes = LayerShapes(family=adapters[0].base[0])
    outputs: dict[str, ModuleOut] = {}
    for name in progress(union_names(adapters), "merging adapters"):
        terms = [(a, a.ratio(r, name), a.modules[name]) for a, r in zip(adapters, ratios, strict=True) if name in a.modules]
        if factor_mode:
            factors = [_factors(name, term) for term in terms]
            up, down, alpha = _concat(name, terms, factors) if concat else _blend(name, terms, factors)
            if shuffle:
                order = torch.randperm(down.shape[0], generator=generator)
                up, down = up[:, order], down[order]
            outputs[name] = ModuleOut(factor_tensors(up, down, alpha, factors[0].weight_shape), factors[0].weight_shape)
        else:
            outputs[name] = _concat_deltas(name, terms, network, shapes)
    family, v_parameterization = adapters[0].base
    metadata = adapter_metadata(
        outputs,
        network,
        family=family,
        v_parameterization=v_parameterization,
        title=Path(save_to).stem,
        merged_from=[a.title for a in adapters],
    )
    return write_adapter(save_to, outputs, metadata, dtype=dtype, overwrite=overwrite)


def _factors(name: str, term: Term) -> Factors:
    adapter, _, tensors = term
    factors = factors_of(adapter.network, tensors, f"{adapter.path}: {name}")
    if factors is None:
        raise ShapeMismatchError(
            f"{adapter.path}: {name}: keys {', '.join(sorted(tensors))} are not lora_down/lora_up/alpha"
        )
    return factors


def _blend(name: str, terms: list[Term], factors: list[Factors]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """kohya's rule: ``down = sum s_i down_i``, ``up = sum |s_i| up_i``, ``s_i = sqrt(a_i/a_base) r_i``."""
    base = factors[0]
    up = torch.zeros_like(base.up)
    down = torch.zeros_like(base.down)
    for (adapter, ratio, _), f in zip(terms, factors, strict=True):
        if f.up.shape != base.up.shape or f.down.shape != base.down.shape:
            raise ShapeMismatchError(
                f"{name}: rank {f.rank} (shape {tuple(f.weight_shape)}) in {adapter.path} but rank {base.rank} "
                f"(shape {tuple(base.weight_shape)}) in {terms[0][0].path}; merging into one adapter needs equal "
                "ranks: use --concat or `adapt svd-merge`"
            )
        s = math.sqrt(f.alpha / base.alpha) * ratio
        down += s * f.down
        up += abs(s) * f.up
    return up, down, base.alpha


def _concat(name: str, terms: list[Term], factors: list[Factors]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The exact sum: factors stacked along the rank, each term's scale folded into its up columns."""
    base = factors[0]
    for (adapter, _, _), f in zip(terms, factors, strict=True):
        if f.up.shape[0] != base.up.shape[0] or f.down.shape[1] != base.down.shape[1]:
            raise ShapeMismatchError(
                f"{name}: layer shape {tuple(f.weight_shape)} in {adapter.path} but {tuple(base.weight_shape)} in "
                f"{terms[0][0].path}; are these adapters for different base models?"
            )
    rank = sum(f.rank for f in factors)
    alpha = base.alpha
    out_scale = alpha / rank
    up = torch.cat(
        [f.up * (ratio * f.scale / out_scale) for (_, ratio, _), f in zip(terms, factors, strict=True)], dim=1
    )
    down = torch.cat([f.down for f in factors], dim=0)
    return up, down, alpha


def _concat_deltas(name: str, terms: list[Term], network: str, shapes: LayerShapes) -> ModuleOut:
    """Types without factors: the summed delta, extracted at the summed rank by the type's hook."""
    total: torch.Tensor | None = None
    shape: torch.Size | None = None
    rank = 0
    for adapter, ratio, tensors in terms:
        delta, this_shape = shapes.delta(adapter.network, name, tensors)
        if shape is not None and this_shape != shape:
            raise ShapeMismatchError(
                f"{name}: layer shape {tuple(this_shape)} in {adapter.path} but {tuple(shape)} in {terms[0][0].path}"
            )
        shape = this_shape
        total = ratio * delta if total is None else total + ratio * delta
        rank += dim_alpha(adapter.network, name, tensors)[0]
    assert total is not None and shape is not None
    return ModuleOut(extract_module(network, total, rank, {"svd": "exact"}), shape)
