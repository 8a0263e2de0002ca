"""``adapt svd-merge``: adapters of any ranks into one adapter of a chosen rank (kohya-format.md §7).

Per module the merged delta is ``sum ratio_i * dW_i``. For factor-based types its SVD is
computed from the factors (:func:`adapters_core.ops.lowrank.low_rank_sum_svd`): exact when
the new rank reaches the sum of the ranks, the optimal truncation otherwise, and the full
delta is never formed. Other types sum their ``delta_weight`` and hand the sum to the output
type's ``extract`` hook. As kohya: ``k = min(new_rank (new_conv_rank for 3x3), in, out)``,
``alpha = k`` (scale 1); the 0.99-quantile clamp of kohya is optional (off by default).
Adapters holding NaN/inf are refused before anything is decomposed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from adapters_core.atomic import check_writable
from adapters_core.errors import ConfigError, ShapeMismatchError
from adapters_core.formats import precision_dtype
from adapters_core.linalg import clamp_factors
from adapters_core.lora_keys import DOWN, UP
from adapters_core.ops.deltas import (
    Adapter,
    LayerShapes,
    ModuleTensors,
    extract_module,
    is_conv3x3,
    progress,
    read_adapters,
    resolve_ratios,
    union_names,
)
from adapters_core.ops.factors import factor_tensors, factors_of, is_factor_based
from adapters_core.ops.lowrank import low_rank_sum_svd, pad_components, truncate
from adapters_core.ops.outputs import ModuleOut, adapter_metadata, write_adapter

Term = tuple[Adapter, float, ModuleTensors]


def target_rank(shape: torch.Size, new_rank: int, new_conv_rank: int | None) -> int:
    """kohya's ``min(new_rank or new_conv_rank for 3x3, in_channels, out_channels)``."""
    wanted = (new_conv_rank or new_rank) if is_conv3x3(shape) else new_rank
    return max(1, min(wanted, shape[0], shape[1]))


def svd_merge(
    models: Sequence[str | os.PathLike[str]],
    ratios: Sequence[float] | None = None,
    *,
    save_to: str | os.PathLike[str],
    new_rank: int = 4,
    new_conv_rank: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "float",
    save_precision: str | None = None,
    clamp_quantile: float | None = None,
    overwrite: bool = False,
    block_weights: Sequence[str] = (),
) -> Path:
    """SVD-merge adapter files into one of rank ``new_rank`` and write it; returns the path.

    ``precision`` is the dtype the result is written in when ``save_precision`` is not given;
    the decompositions always run in float32 (float64 for the small core).
    """
    if new_rank < 1 or (new_conv_rank is not None and new_conv_rank < 1):
        raise ConfigError(f"--new_rank {new_rank} / --new_conv_rank {new_conv_rank}: ranks must be at least 1")
    if clamp_quantile is not None and not 0.0 < clamp_quantile <= 1.0:
        raise ConfigError(f"--clamp_quantile {clamp_quantile}: expected a value in (0, 1]")
    check_writable(save_to, overwrite)
    dtype = precision_dtype(save_precision or precision)
    adapters = read_adapters(models, block_weights)
    ratios = resolve_ratios(len(adapters), ratios)
    network = adapters[0].network
    shapes = LayerShapes(family=adapters[0].base[0])
    names = union_names(adapters)
    _check_all_layers(adapters, names)
    outputs: dict[str, ModuleOut] = {}
    for name in progress(names, "svd-merge"):
        terms = [(a, a.ratio(r, name), a.modules[name]) for a, r in zip(adapters, ratios, strict=True) if name in a.modules]
        factored = _factored(name, terms, network, torch.device(device), new_rank, new_conv_rank, clamp_quantile)
        outputs[name] = factored or _from_deltas(
            name, terms, network, shapes, torch.device(device), new_rank, new_conv_rank, clamp_quantile
        )
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


def _check_all_layers(adapters: list[Adapter], names: list[str]) -> None:
    """Every adapter's module ``name`` must adapt a layer of one shape (else: another base model),
    checked for all modules from the tensor shapes before any decomposition starts."""
    for name in names:
        seen: list[tuple[Adapter, int, int]] = []
        for adapter in adapters:
            tensors = adapter.modules.get(name, {})
            if DOWN in tensors and UP in tensors:  # factor-based modules; others are checked on their deltas
                seen.append((adapter, int(tensors[UP].shape[0]), int(tensors[DOWN][0].numel())))
        for adapter, out, inputs in seen[1:]:
            first_adapter, first_out, first_inputs = seen[0]
            if (out, inputs) != (first_out, first_inputs):
                raise ShapeMismatchError(
                    f"{name}: a layer of {out} x {inputs} in {adapter.path} but {first_out} x {first_inputs} "
                    f"in {first_adapter.path}; are these adapters for different base models?"
                )


def _factored(
    name: str,
    terms: list[Term],
    network: str,
    device: torch.device,
    new_rank: int,
    new_conv_rank: int | None,
    clamp_quantile: float | None,
) -> ModuleOut | None:
    """The low-rank route, or None when the output type or a term is not factor-based."""
    if not is_factor_based(network):
        return None
    factors = [factors_of(a.network, t, f"{a.path}: {name}") for a, _, t in terms]
    if any(f is None for f in factors):
        return None
    first = factors[0]
    assert first is not None
    ups, downs = [], []
    for (adapter, ratio, _), f in zip(terms, factors, strict=True):
        assert f is not None
        ups.append((ratio * f.scale) * f.up.to(device))
        downs.append(f.down.to(device))
    shape = first.weight_shape
    rank = target_rank(shape, new_rank, new_conv_rank)
    up, down = truncate(*low_rank_sum_svd(ups, downs), rank)
    up, down = pad_components(up, down, rank)
    if clamp_quantile is not None and clamp_quantile < 1.0:
        up, down = clamp_factors(up, down, clamp_quantile)
    return ModuleOut(factor_tensors(up.cpu(), down.cpu(), float(rank), shape), shape)


def _from_deltas(
    name: str,
    terms: list[Term],
    network: str,
    shapes: LayerShapes,
    device: torch.device,
    new_rank: int,
    new_conv_rank: int | None,
    clamp_quantile: float | None,
) -> ModuleOut:
    """The general route: the summed ``delta_weight`` through the output type's ``extract``."""
    deltas = [(adapter, ratio, *shapes.delta(adapter.network, name, tensors)) for adapter, ratio, tensors in terms]
    shape = deltas[0][3]
    total = torch.zeros(shape, device=device)
    for adapter, ratio, delta, this_shape in deltas:
        if this_shape.numel() != shape.numel() or this_shape[0] != shape[0]:
            raise ShapeMismatchError(
                f"{name}: layer shape {tuple(this_shape)} in {adapter.path} but {tuple(shape)} in {terms[0][0].path}; "
                "are these adapters for different base models?"
            )
        total += ratio * delta.to(device).reshape(shape)
    options = {"svd": "exact", "clamp_quantile": clamp_quantile}
    tensors = extract_module(network, total, target_rank(shape, new_rank, new_conv_rank), options)
    return ModuleOut({k: v.cpu() for k, v in tensors.items()}, shape)
