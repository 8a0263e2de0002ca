"""How well an adapter represents a change: the fit ``extract`` and ``resize`` report.

Per layer, with ``D`` the change (a weight difference, or the module's delta before resizing)
and ``A`` the delta of the written module: the relative error ``e = ||D - A||_F / ||D||_F``
and the share of the change's Frobenius norm kept, ``sqrt(1 - e^2)``. For a truncated SVD the
residual is orthogonal to the fit, so the share kept is ``||A||_F / ||D||_F`` (kohya's
"Frobenius retained"); defined through the error it also counts what a clamp costs. Over
the model both are taken on all layers together (the norms' squares add up).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerFit:
    """``norm = ||D||_F`` and ``residual = ||D - A||_F`` of one layer."""

    name: str
    norm: float
    residual: float

    @property
    def relative_error(self) -> float:
        return self.residual / self.norm if self.norm else 0.0

    @property
    def kept(self) -> float:
        return max(0.0, 1.0 - self.relative_error**2) ** 0.5


def layer_fit(name: str, change: torch.Tensor, fitted: torch.Tensor) -> LayerFit:
    """The fit of ``fitted`` (the module's delta) to ``change`` (same number of elements)."""
    change = change.float()
    residual = change.reshape(-1) - fitted.float().reshape(-1).to(change.device)
    return LayerFit(name, float(torch.linalg.vector_norm(change)), float(torch.linalg.vector_norm(residual)))


def truncation_fit(name: str, singular_values: torch.Tensor, k: int, scale: float = 1.0) -> LayerFit:
    """The fit of the best rank-``k`` truncation of ``scale * F``, ``singular_values`` those of ``F``."""
    squares = singular_values.double().pow(2)
    norm = abs(scale) * float(squares.sum()) ** 0.5
    return LayerFit(name, norm, abs(scale) * float(squares[k:].sum()) ** 0.5)


@dataclass(frozen=True)
class FitSummary:
    """The fit over all layers and the worst layer's."""

    layers: tuple[LayerFit, ...]

    @property
    def overall(self) -> LayerFit:
        norm = sum(f.norm**2 for f in self.layers) ** 0.5
        return LayerFit("overall", norm, sum(f.residual**2 for f in self.layers) ** 0.5)

    @property
    def worst(self) -> LayerFit | None:
        return max(self.layers, key=lambda f: f.relative_error, default=None)

    def describe(self) -> str:
        """One line: share kept and relative error, overall and for the worst layer."""
        overall, worst = self.overall, self.worst
        line = (
            f"fit: kept {overall.kept:.2%} of the change's Frobenius norm (relative error "
            f"{overall.relative_error:.2%})"
        )
        if worst is not None:
            line += f"; worst layer {worst.name}: kept {worst.kept:.2%} (relative error {worst.relative_error:.2%})"
        return line
