"""LoHa math on plain tensors: the delta of a module's factors, and factors for a given delta.

Shapes follow LyCORIS's (non-Tucker) LoHa files, which A1111 and ComfyUI read:
``hada_w1_a``/``hada_w2_a`` are ``[out, dim]``, ``hada_w1_b``/``hada_w2_b`` are
``[dim, in * kh * kw]`` (conv kernels flattened), ``alpha`` a 0-d tensor. The delta is the
element-wise product of two rank-``dim`` matrices, so it can reach rank ``dim ** 2``.
"""

from __future__ import annotations

import torch

from adapters_core.linalg import low_rank_factors
from adapters_core.lora_keys import ALPHA, resolve_alpha

KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", ALPHA)


def loha_scale(alpha: float | torch.Tensor | None, dim: int) -> float:
    """alpha / dim; alpha None or 0 means alpha = dim (scale 1), as in LoRA files."""
    return resolve_alpha(alpha, dim) / dim


def loha_delta(
    w1a: torch.Tensor,
    w1b: torch.Tensor,
    w2a: torch.Tensor,
    w2b: torch.Tensor,
    alpha: float | torch.Tensor | None,
    weight_shape: torch.Size | tuple[int, ...],
) -> torch.Tensor:
    """``(w1a @ w1b) * (w2a @ w2b) * alpha/dim`` in float32, reshaped to the layer's weight shape."""
    product = (w1a.float() @ w1b.float()) * (w2a.float() @ w2b.float())
    return (product * loha_scale(alpha, w1b.shape[0])).reshape(weight_shape)


def loha_factors(
    delta: torch.Tensor,
    dim: int,
    *,
    alpha: float | None = None,
    method: str = "exact",
    clamp_quantile: float | None = None,
) -> dict[str, torch.Tensor]:
    """LoHa tensors whose :func:`loha_delta` is the best rank-``dim`` approximation of ``delta``.

    Finding the best Hadamard product of two rank-``dim`` matrices is a non-convex problem;
    this inverse takes the simple exact route instead: ``w1`` = the truncated SVD of
    ``delta`` and ``w2`` = an all-ones matrix written as a rank-1 product padded with zeros
    to rank ``dim`` (``w2a[:, 0] = 1``, ``w2b[0, :] = 1``), so the Hadamard product is the
    SVD approximation itself. alpha defaults to dim (scale 1); another alpha is compensated
    in ``w1a``.
    """
    up, down = low_rank_factors(delta, dim, method=method, clamp_quantile=clamp_quantile)
    rank = down.shape[0]
    alpha_value = float(rank) if alpha is None else float(alpha)
    w2a = torch.zeros(up.shape[0], rank)
    w2b = torch.zeros(rank, down.shape[1])
    w2a[:, 0] = 1.0
    w2b[0, :] = 1.0
    return {
        "hada_w1_a": (up / loha_scale(alpha_value, rank)).contiguous(),
        "hada_w1_b": down.contiguous(),
        "hada_w2_a": w2a,
        "hada_w2_b": w2b,
        "alpha": torch.tensor(alpha_value),
    }
