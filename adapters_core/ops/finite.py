"""Refuse adapters holding NaN or infinite values before a tool decomposes them.

An SVD of a non-finite matrix fails deep in LAPACK (``LinAlgError``) or returns NaN factors;
the tools check their inputs first and name the file and module at fault.
"""

from __future__ import annotations

from adapters_core.errors import NonFiniteError
from adapters_core.ops.deltas import Adapter


def require_finite(adapter: Adapter) -> None:
    """Raise :class:`NonFiniteError` naming the first module tensor of ``adapter`` with NaN/inf."""
    for name, tensors in adapter.modules.items():
        for key, value in tensors.items():
            if value.is_floating_point() and not bool(value.isfinite().all()):
                raise NonFiniteError(
                    f"{adapter.path}: module {name}: {key} holds NaN or infinite values; "
                    "a finite adapter is needed (nothing was written)"
                )
