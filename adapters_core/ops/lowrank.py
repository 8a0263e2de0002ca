"""Linear algebra on sums of low-rank terms, without forming the full matrix (pure functions).

A sum of R rank-one terms ``sum_i up_i @ down_i`` (``A @ B`` with ``A = [up_1 | up_2 ...]``,
``B = [down_1; down_2; ...]``) has its SVD in the span of the stacked factors: with
``A = Qa Ra`` and ``B^T = Qb Rb`` (thin QR), ``A B = Qa (Ra Rb^T) Qb^T`` and the SVD of the
R x R core gives the SVD of the sum. Cost O((out + n) R^2) instead of the
O(out * n * min(out, n)) of an SVD of the full matrix, and exact (no sketching).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def low_rank_sum_svd(
    ups: Sequence[torch.Tensor], downs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, Vh)`` of ``sum_i ups[i] @ downs[i]`` (``ups[i]: [out, r_i]``, ``downs[i]: [r_i, n]``).

    ``S`` holds ``min(out, n, sum r_i)`` values, largest first; ``U @ diag(S) @ Vh`` equals the
    sum to float32 rounding. The small core is decomposed in float64.
    """
    stacked_up = torch.cat([u.float() for u in ups], dim=1)
    stacked_down = torch.cat([d.float() for d in downs], dim=0)
    q_up, r_up = torch.linalg.qr(stacked_up)
    q_down, r_down = torch.linalg.qr(stacked_down.T)
    core = r_up.double() @ r_down.double().T
    u_core, s, vh_core = torch.linalg.svd(core, full_matrices=False)
    return q_up @ u_core.float(), s.float(), vh_core.float() @ q_down.T


def truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down) = (U_k diag(S_k), Vh_k)``, ``k = min(rank, len(S))``: the best rank-k factors."""
    k = min(rank, s.shape[0])
    return u[:, :k] * s[:k].unsqueeze(0), vh[:k]


def pad_components(up: torch.Tensor, down: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend ``up [out, k]``, ``down [k, n]`` to ``rank`` components that add nothing.

    The new columns of ``up`` are zero and the new rows of ``down`` orthonormal to the row
    space of ``down`` (what a full SVD would return for zero singular values), so the module
    has the requested rank, the same delta, and stays trainable. ``rank`` must be <= n.
    """
    k, n = down.shape
    extra = rank - k
    if extra <= 0:
        return up, down
    if rank > n:
        raise ValueError(f"cannot pad {k} components to rank {rank} in a space of dimension {n}")
    generator = torch.Generator().manual_seed(0)
    fill = torch.randn(n, extra, generator=generator).to(down.device, down.dtype)
    if k:
        basis, _ = torch.linalg.qr(down.T)
        fill = fill - basis @ (basis.T @ fill)
    rows, _ = torch.linalg.qr(fill)
    zeros = torch.zeros(up.shape[0], extra, dtype=up.dtype, device=up.device)
    return torch.cat([up, zeros], dim=1), torch.cat([down, rows.T], dim=0)
