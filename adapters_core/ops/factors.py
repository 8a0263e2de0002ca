"""The kohya LoRA factor layout (``lora_down``/``lora_up``/``alpha``) as the shared tools see it.

Most tools need only a module's delta (the ``delta_weight`` hook) and its inverse (the
``extract`` hook). Three kohya semantics are defined on the factors themselves: the
LoRA+LoRA merge (the square-root ratio rule), the DyLoRA split (the first k components) and
the fast SVD of a sum of low-rank terms. This module is the one place in the tools that
reads or writes that layout: a tool asks :func:`factors_of` for a :class:`Factors` view and
falls back to deltas when the answer is ``None`` (a type that is not factor-based).

A type is factor-based when it records a kohya LoRA module (``networks.lora``,
``networks.dylora``) in its :class:`~adapters_core.types.NetworkType`: the file format,
not an implementation, defines the meaning of its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from adapters_core.errors import ShapeMismatchError
from adapters_core.lora_keys import ALPHA, DOWN, LORA_KEYS, UP, resolve_alpha
from adapters_core.plugins import get_registry

FACTOR_NETWORK_MODULES = frozenset({"networks.lora", "networks.dylora"})
FACTOR_KEYS = frozenset(LORA_KEYS)


def is_factor_based(network: str) -> bool:
    """Whether files of type ``network`` store kohya LoRA factors."""
    return get_registry().get(network).kohya_module in FACTOR_NETWORK_MODULES


@dataclass(frozen=True)
class Factors:
    """One module as ``delta = scale * up @ down`` on flattened matrices.

    ``up`` is ``[out, r]`` and ``down`` ``[r, in*kh*kw]`` (float32, the file's values);
    ``alpha`` is the effective alpha (a missing or zero alpha already resolved to ``r``);
    ``weight_shape`` is the layer's weight shape as the factors tell it (4-D for convs).
    """

    up: torch.Tensor
    down: torch.Tensor
    alpha: float
    weight_shape: torch.Size

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def factors_of(network: str, tensors: Mapping[str, torch.Tensor], name: str = "module") -> Factors | None:
    """The factor view of one module, or ``None`` when the type or the keys are not kohya LoRA."""
    keys = set(tensors)
    if not is_factor_based(network) or not {DOWN, UP} <= keys or not keys <= FACTOR_KEYS:
        return None
    down, up = tensors[DOWN], tensors[UP]
    rank = int(down.shape[0])
    if up.dim() < 2 or up.shape[1] != rank or up[0].numel() != rank:
        raise ShapeMismatchError(
            f"{name}: lora_up has shape {tuple(up.shape)} but lora_down {tuple(down.shape)}; "
            f"expected [out, {rank}(,1,1)]"
        )
    return Factors(
        up=up.reshape(up.shape[0], rank).float(),
        down=down.reshape(rank, -1).float(),
        alpha=resolve_alpha(tensors.get(ALPHA), rank),
        weight_shape=torch.Size((up.shape[0], *down.shape[1:])),
    )


def factor_tensors(
    up: torch.Tensor, down: torch.Tensor, alpha: float, weight_shape: torch.Size
) -> dict[str, torch.Tensor]:
    """kohya module tensors from ``up [out, k]`` and ``down [k, in*kh*kw]``.

    Layers with a 4-D weight get ``down [k, in, kh, kw]`` and ``up [out, k, 1, 1]``, as kohya
    writes convolutions (1x1 and 3x3).
    """
    k = down.shape[0]
    if len(weight_shape) == 4:
        up = up.reshape(weight_shape[0], k, 1, 1)
        down = down.reshape(k, *weight_shape[1:])
    return {DOWN: down.contiguous(), UP: up.contiguous(), ALPHA: torch.tensor(float(alpha))}


def first_components(tensors: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The module restricted to its first ``k`` rank components, alpha unchanged (DyLoRA split).

    The stored layout (2-D or 4-D) is kept; a module of rank <= ``k`` is returned whole.
    """
    out = dict(tensors)
    out[DOWN] = tensors[DOWN][:k].contiguous()
    out[UP] = tensors[UP][:, :k].contiguous()
    return out
