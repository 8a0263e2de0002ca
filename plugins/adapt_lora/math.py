"""LoRA math on plain tensors: the delta of (up, down, alpha) and its inverse."""

from __future__ import annotations

import torch

from adapters_core.linalg import low_rank_factors
from adapters_core.lora_keys import resolve_alpha
from adapters_core.ops.factors import factor_tensors


def lora_scale(alpha: float | torch.Tensor | None, rank: int) -> float:
    """alpha / rank, with alpha None or 0 meaning alpha = rank (files from before alpha existed)."""
    return resolve_alpha(alpha, rank) / rank


def lora_delta(
    up: torch.Tensor, down: torch.Tensor, alpha: float | torch.Tensor | None, weight_shape: torch.Size
) -> torch.Tensor:
    """``(alpha/r) * up @ down`` reshaped to the layer's weight shape, in float32.

    One formula covers Linear (``[out,r] @ [r,in]``), 1x1 convs and 3x3 convs: ``up`` is
    always 1x1, so ``dW[o,i,:,:] = sum_k up[o,k] * down[k,i,:,:]`` is the matrix product of
    ``up`` flattened to ``[out, r]`` and ``down`` flattened to ``[r, in*kh*kw]``.
    """
    rank = down.shape[0]
    scaled_up = up.reshape(up.shape[0], -1).float() * lora_scale(alpha, rank)  # scale the small factor
    return (scaled_up @ down.reshape(rank, -1).float()).reshape(weight_shape)


def lora_factors(
    delta: torch.Tensor,
    rank: int,
    *,
    alpha: float | None = None,
    method: str = "exact",
    clamp_quantile: float | None = None,
    clip_budget: float | None = None,
) -> dict[str, torch.Tensor]:
    """Module tensors whose :func:`lora_delta` is the best rank-``rank`` fit of ``delta``.

    ``alpha`` defaults to the rank (scale 1, as kohya's extract writes); another alpha is
    compensated in ``lora_up`` so the delta is unchanged. ``clamp_quantile`` and ``clip_budget``
    are those of :func:`adapters_core.linalg.low_rank_factors`.
    """
    up, down = low_rank_factors(delta, rank, method=method, clamp_quantile=clamp_quantile, clip_budget=clip_budget)
    k = down.shape[0]
    alpha_value = float(k) if alpha is None else float(alpha)
    return factor_tensors(up / lora_scale(alpha_value, k), down, alpha_value, delta.shape)
