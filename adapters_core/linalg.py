"""Low-rank factorisation used by every type's ``extract`` and by the shared tools."""

from __future__ import annotations

import torch

from adapters_core.choices import SVD_METHODS


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
    """Clamp both factors to +-q, q the ``quantile`` of their concatenated absolute values.

    kohya's extract and svd-merge do this with 0.99 to tame outliers.
    """
    values = torch.cat([up.flatten(), down.flatten()]).abs().float()
    if values.numel() > 16_000_000:  # torch.quantile's input limit
        values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:16_000_000]]
    limit = torch.quantile(values, quantile).item()
    return up.clamp(-limit, limit), down.clamp(-limit, limit)


def low_rank_factors(
    delta: torch.Tensor,
    rank: int,
    *,
    method: str = "exact",
    clamp_quantile: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``up [out, k]`` and ``down [k, in*kh*kw]`` with ``up @ down`` the best rank-k fit of ``delta``.

    ``delta`` is 2-D or a 4-D conv weight (flattened over ``in, kh, kw``).
    """
    matrix = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = truncated_svd(matrix, rank, method)
    up, down = u * s.unsqueeze(0), vh
    if clamp_quantile is not None and clamp_quantile < 1.0:
        up, down = clamp_factors(up, down, clamp_quantile)
    return up, down
