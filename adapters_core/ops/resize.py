"""``adapt resize``: change an adapter's rank, keeping its effective scale (kohya-format.md §9).

Per module, with ``s = alpha / rank`` and ``F = delta / s`` (the unscaled product), the new
rank ``k`` is ``new_rank`` or chosen from the singular values of ``F`` (``sv_ratio``,
``sv_fro``, ``sv_cumulative``, capped at ``new_rank``; ``new_conv_rank`` for 3x3 convs), and
the module is rewritten as the best rank-k fit with ``alpha = s * k``, so
``delta = (alpha/k) * F_k`` keeps the old scale. Factor-based modules are decomposed from
their factors (:func:`low_rank_sum_svd`, no full matrix); other types go through
``delta_weight`` and their ``extract`` hook. Either way the new module is the optimal
truncation, so its fit (:mod:`adapters_core.ops.fit`) follows from the singular values.
Adapters holding NaN/inf are refused before anything is decomposed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters_core.atomic import check_writable
from adapters_core.choices import DYNAMIC_METHODS
from adapters_core.errors import ConfigError
from adapters_core.formats import precision_dtype
from adapters_core.ops.deltas import (
    LayerShapes,
    ModuleTensors,
    dim_alpha,
    extract_module,
    is_conv3x3,
    progress,
    read_adapter,
)
from adapters_core.ops.factors import factor_tensors, factors_of
from adapters_core.ops.fit import LayerFit, truncation_fit
from adapters_core.ops.lowrank import low_rank_sum_svd, pad_components, truncate
from adapters_core.ops.outputs import ModuleOut, adapter_metadata, rank_summary, write_adapter

MIN_SINGULAR_VALUE = 1e-6


@dataclass(frozen=True)
class ModuleResize:
    """What resizing kept of one module (``--verbose``)."""

    name: str
    old_rank: int
    new_rank: int
    sum_retained: float  # sum of kept singular values / sum of all
    max_ratio: float  # S[0] / S[k-1]
    fit: LayerFit  # of the new module to the old one (fit.kept: the Frobenius norm retained)


def dynamic_rank(s: torch.Tensor, method: str, param: float, length: int) -> int:
    """kohya's dynamic rank: an index from the singular values ``s`` (largest first), clipped to
    ``[1, length - 1]``, plus one. ``length`` is the full number of singular values of the
    matrix (``min(out, in*kh*kw)``), zeros included."""
    if method == "sv_ratio":
        index = int((s > s[0] / param).sum())
    elif method in ("sv_cumulative", "sv_fro"):
        values, target = (s, param) if method == "sv_cumulative" else (s.pow(2), param**2)
        cumulative = torch.cumsum(values, dim=0) / values.sum()
        index = int(torch.searchsorted(cumulative, torch.tensor(float(target), dtype=cumulative.dtype))) + 1
    else:
        raise ConfigError(f"--dynamic_method {method}: expected one of {', '.join(DYNAMIC_METHODS)}")
    return max(1, min(index, length - 1)) + 1


def choose_rank(s: torch.Tensor, max_rank: int, length: int, method: str | None, param: float | None) -> int:
    """The new rank: 1 for a zero module, else ``max_rank`` or the dynamic rank capped at it."""
    if s.numel() == 0 or float(s[0]) <= MIN_SINGULAR_VALUE:
        return 1
    rank = dynamic_rank(s, method, float(param), length) if method else max_rank  # type: ignore[arg-type]
    return max(1, min(rank, max_rank, length))


def retained(s: torch.Tensor, k: int) -> tuple[float, float]:
    """(sum retained, S[0]/S[k-1]) of keeping the first ``k`` values."""
    total = float(s.abs().sum())
    kept = s[:k]
    sum_part = float(kept.abs().sum()) / total if total else 1.0
    last = float(kept[-1]) if kept.numel() else 0.0
    return sum_part, float(s[0]) / last if last else float("inf")


def check_dynamic(method: str | None, param: float | None) -> None:
    if method is None:
        return
    if method not in DYNAMIC_METHODS:
        raise ConfigError(f"--dynamic_method {method}: expected one of {', '.join(DYNAMIC_METHODS)}")
    if param is None:
        raise ConfigError(f"--dynamic_method {method} needs --dynamic_param")
    if method == "sv_ratio" and param < 1:
        raise ConfigError(f"--dynamic_param {param}: sv_ratio needs a ratio >= 1 (largest / smallest kept value)")
    if method != "sv_ratio" and not 0 < param <= 1:
        raise ConfigError(f"--dynamic_param {param}: {method} needs a fraction in (0, 1]")


def resize_adapter(
    model: str | os.PathLike[str],
    *,
    save_to: str | os.PathLike[str],
    new_rank: int = 4,
    new_conv_rank: int | None = None,
    dynamic_method: str | None = None,
    dynamic_param: float | None = None,
    save_precision: str | None = "float",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> tuple[Path, list[ModuleResize]]:
    """Resize ``model`` and write it to ``save_to``; returns the path and what each module kept."""
    if new_rank < 1 or (new_conv_rank is not None and new_conv_rank < 1):
        raise ConfigError(f"--new_rank {new_rank} / --new_conv_rank {new_conv_rank}: ranks must be at least 1")
    check_dynamic(dynamic_method, dynamic_param)
    check_writable(save_to, overwrite)
    dtype = precision_dtype(save_precision)
    adapter = read_adapter(model)
    network = adapter.network
    shapes = LayerShapes(family=adapter.base[0])
    outputs: dict[str, ModuleOut] = {}
    report: list[ModuleResize] = []
    for name, tensors in progress(adapter.modules.items(), "resizing", total=len(adapter.modules)):
        out, stats = _resize_module(
            network, name, tensors, shapes, torch.device(device), new_rank, new_conv_rank, dynamic_method, dynamic_param
        )
        outputs[name] = out
        report.append(stats)
    old = (
        adapter.metadata.get("ss_network_dim")
        or rank_summary({n: ModuleOut(t, torch.Size()) for n, t in adapter.modules.items()}, network)["dim"]
    )
    old_comment = adapter.metadata.get("ss_training_comment", "")
    if dynamic_method:
        comment = f"Dynamic resize with {dynamic_method}: {dynamic_param} from {old}; {old_comment}"
    else:
        conv = f" (conv: {new_conv_rank})" if new_conv_rank else ""
        comment = f"dimension is resized from {old} to {new_rank}{conv}; {old_comment}"
    family, v_parameterization = adapter.base
    metadata = adapter_metadata(
        outputs,
        network,
        family=family,
        v_parameterization=v_parameterization,
        title=Path(save_to).stem,
        base=adapter.metadata,
        comment=comment,
    )
    return write_adapter(save_to, outputs, metadata, dtype=dtype, overwrite=overwrite), report


def _resize_module(
    network: str,
    name: str,
    tensors: ModuleTensors,
    shapes: LayerShapes,
    device: torch.device,
    new_rank: int,
    new_conv_rank: int | None,
    method: str | None,
    param: float | None,
) -> tuple[ModuleOut, ModuleResize]:
    old_rank, alpha = dim_alpha(network, name, tensors)
    scale = alpha / old_rank
    factors = factors_of(network, tensors, name)
    if factors is not None:
        shape = factors.weight_shape
        u, s, vh = low_rank_sum_svd([factors.up.to(device)], [factors.down.to(device)])
    else:
        delta, shape = shapes.delta(network, name, tensors)
        s = torch.linalg.svdvals(delta.to(device).reshape(shape[0], -1) / scale)
    cap = (new_conv_rank or new_rank) if is_conv3x3(shape) else new_rank
    length = min(shape[0], torch.Size(shape[1:]).numel())
    k = choose_rank(s, cap, length, method, param)
    if factors is not None:
        up, down = pad_components(*truncate(u, s, vh, k), k)
        out = factor_tensors(up.cpu(), down.cpu(), scale * k, shape)
    else:
        out = extract_module(network, delta, k, {"alpha": scale * k, "svd": "exact"})
    s = s.cpu()
    return ModuleOut(out, shape), ModuleResize(name, old_rank, k, *retained(s, k), truncation_fit(name, s, k, scale))
