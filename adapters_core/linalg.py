"""Low-rank factorisation used by every type's ``extract`` and by the shared tools."""

from __future__ import annotations

import torch

from adapters_core.choices import SVD_METHODS

OUTLIER_QUANTILE = 0.99  # outlier_fence: q + OUTLIER_FENCE * (q - median), q this quantile of |x|
OUTLIER_FENCE = 3.0  # Tukey's "far out"
QUANTILE_INPUT_LIMIT = 16_000_000  # torch.quantile's input limit


def truncated_svd(
    matrix: torch.Tensor, rank: int, method: str = "exact", oversample: int = 8, power_iterations: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_k, S_k, Vh_k)`` of a 2-D float matrix, ``k = min(rank, *matrix.shape)``.

    ``randomized`` projects onto a Gaussian sketch of ``k + oversample`` columns refined by
    ``power_iterations`` rounds of subspace iteration (Halko et al.), then takes the exact
    SVD of the small projected matrix: much faster than the full SVD when ``k`` is small.
    """
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method '{method}'; expected one of {', '.join(SVD_METHODS)}")
    k = max(1, min(rank, *matrix.shape))
    work = matrix.float()
    sketch = k + oversample
    if method == "exact" or sketch >= min(work.shape):
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    generator = torch.Generator(device=work.device).manual_seed(0)
    omega = torch.randn(work.shape[1], sketch, device=work.device, generator=generator)
    q, _ = torch.linalg.qr(work @ omega)
    for _ in range(power_iterations):
        q, _ = torch.linalg.qr(work.T @ q)
        q, _ = torch.linalg.qr(work @ q)
    u_small, s, vh = torch.linalg.svd(q.T @ work, full_matrices=False)
    return (q @ u_small)[:, :k], s[:k], vh[:k]


def clamp_factors(up: torch.Tensor, down: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """kohya's clamp: both factors to +-q, q the ``quantile`` of their concatenated (signed) values.

    kohya's extract and svd-merge do this with 0.99 on ``up = U*S`` and ``down = Vh``. Where the
    two factors differ in scale it clips most of the larger one (see :func:`clip_outliers`).
    """
    values = torch.cat([up.flatten(), down.flatten()]).float()
    if values.numel() > QUANTILE_INPUT_LIMIT:
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:QUANTILE_INPUT_LIMIT]]
    limit = abs(torch.quantile(values, quantile).item())
    return up.clamp(-limit, limit), down.clamp(-limit, limit)


def product_distance(up_a: torch.Tensor, down_a: torch.Tensor, up_b: torch.Tensor, down_b: torch.Tensor) -> float:
    """``||up_a @ down_a - up_b @ down_b||_F`` from the factors' Gram matrices (no full product).

    The difference is ``[up_a, -up_b] @ [down_a; down_b]``, whose squared norm is the sum of the
    elementwise product of the two ``2k x 2k`` Gram matrices (computed in float64).
    """
    left = torch.cat([up_a, -up_b], dim=1).double()
    right = torch.cat([down_a, down_b], dim=0).double()
    squared = float(((left.T @ left) * (right @ right.T)).sum())
    return max(squared, 0.0) ** 0.5


def outlier_fence(values: torch.Tensor) -> float:
    """Tukey's far-out fence on absolute values: ``q + OUTLIER_FENCE * (q - median)``, ``q`` the
    ``OUTLIER_QUANTILE`` quantile of ``|values|``.

    For Gaussian entries (the factors of a generic change) that is about 8.3 standard
    deviations, which no entry reaches: only entries far outside the bulk are outliers.
    """
    ordered = values.abs().flatten().sort().values
    last = ordered.numel() - 1
    high, median = float(ordered[int(OUTLIER_QUANTILE * last)]), float(ordered[last // 2])
    return high + OUTLIER_FENCE * (high - median)


def clip_outliers(
    up: torch.Tensor, down: torch.Tensor, budget: float, steps: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip each factor's outliers, moving the product ``up @ down`` by at most ``budget``.

    Each factor gets its own limit, so one factor's scale does not decide the other's: its
    :func:`outlier_fence`, raised towards its largest entry (the same fraction ``t`` of the
    way for both; ``t = 1`` clips nothing) as far as needed for the clipped product to lie
    within ``budget`` (Frobenius) of the unclipped one (bisection on ``t``, ``steps`` rounds).
    By the triangle inequality the clipped fit's error exceeds the unclipped fit's by at most
    ``budget``: outliers that carry little of the change are clipped, entries that carry
    much of it are kept.
    """
    fences = [outlier_fence(up), outlier_fence(down)]
    peaks = [float(up.abs().max()), float(down.abs().max())]
    if all(fence >= peak for fence, peak in zip(fences, peaks, strict=True)):
        return up, down

    def clipped(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = (fence + t * max(peak - fence, 0.0) for fence, peak in zip(fences, peaks, strict=True))
        return up.clamp(-a, a), down.clamp(-b, b)

    def fits(pair: tuple[torch.Tensor, torch.Tensor]) -> bool:
        return product_distance(up, down, *pair) <= budget

    best = clipped(0.0)
    if fits(best):
        return best
    low, high, best = 0.0, 1.0, (up, down)
    for _ in range(steps):
        middle = (low + high) / 2
        candidate = clipped(middle)
        if fits(candidate):
            high, best = middle, candidate
        else:
            low = middle
    return best


def low_rank_factors(
    delta: torch.Tensor,
    rank: int,
    *,
    method: str = "exact",
    clamp_quantile: float | None = None,
    clip_budget: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``up [out, k]`` and ``down [k, in*kh*kw]`` with ``up @ down`` the best rank-k fit of ``delta``.

    ``delta`` is 2-D or a 4-D conv weight (flattened over ``in, kh, kw``). Three ways to treat
    the factors' extreme entries:

    * ``clamp_quantile`` below 1: kohya's clamp (:func:`clamp_factors`) on ``U*S`` and ``Vh``;
    * else ``clip_budget`` (a fraction, e.g. 0.01): the factors are balanced
      (``U*sqrt(S)``, ``sqrt(S)*Vh``: both of the same scale) and :func:`clip_outliers` clips
      the outliers of each as far as that moves the fit by at most ``clip_budget`` times the
      Frobenius norm of ``delta``: the relative error stays within ``clip_budget`` of the
      optimal rank-k fit on every layer, whatever its scale;
    * else neither: ``U*S`` and ``Vh``, the truncation itself.
    """
    matrix = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = truncated_svd(matrix, rank, method)
    if clamp_quantile is not None and clamp_quantile < 1.0:
        return clamp_factors(u * s.unsqueeze(0), vh, clamp_quantile)
    if clip_budget is not None:
        root = s.sqrt()
        up, down = u * root.unsqueeze(0), root.unsqueeze(1) * vh
        budget = clip_budget * float(torch.linalg.vector_norm(matrix))
        return clip_outliers(up, down, budget)
    return u * s.unsqueeze(0), vh
