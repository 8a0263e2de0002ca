"""The DyLoRA module: LierLa's module whose gradient reaches one rank unit per step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adapt_lora.module import LoRAModule
from adapters_core.errors import NetworkOptionError
from adapters_core.types import ModuleSpec


def unit_slice(weight: torch.Tensor, start: int, stop: int, dim: int) -> torch.Tensor:
    """``weight`` whose components ``[start, stop)`` along ``dim`` carry gradient, the rest detached."""
    before, trained, after = weight.split([start, stop - start, weight.shape[dim] - stop], dim=dim)
    return torch.cat([before.detach(), trained, after.detach()], dim=dim)


class DyLoRAModule(LoRAModule):
    """kohya's DyLoRA forward: all ``r`` components are used, only the sampled unit
    ``[b, b+unit)`` is trained, and the output is scaled by ``sqrt(r / (b + unit))``.

    The weights are stored as one ``lora_down``/``lora_up`` pair (the file is a plain LoRA);
    the per-unit training is a gradient mask, which is equivalent to kohya's per-row
    ``requires_grad`` switching. Outside training the module is an ordinary LoRA.
    """

    def __init__(self, name: str, layer: nn.Module, dim: int, alpha: float | None, unit: int, **dropouts: Any) -> None:
        if unit <= 0 or dim % unit != 0:
            raise NetworkOptionError(f"{name}: DyLoRA unit {unit} must divide the rank {dim}")
        super().__init__(name, layer, dim, alpha, **dropouts)
        self.unit = unit
        self.unit_start = dim - unit

    def sample_unit(self, generator: torch.Generator | None = None) -> None:
        b = int(torch.randint(0, self.lora_dim, (), generator=generator))
        self.unit_start = b - b % self.unit

    def on_train_step(self, step: int) -> None:
        """Each step trains one random rank unit (from torch's global generator, seeded per step)."""
        self.sample_unit()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        down, up, scale = super().factors()
        if not self.training:
            return down, up, scale
        start, stop = self.unit_start, self.unit_start + self.unit
        return (
            unit_slice(down, start, stop, 0),
            unit_slice(up, start, stop, 1),
            scale * math.sqrt(self.lora_dim / stop),
        )


def build_dylora_module(spec: ModuleSpec) -> DyLoRAModule:
    options = spec.options
    return DyLoRAModule(
        spec.name,
        spec.layer,
        spec.rank,
        spec.alpha,
        int(options.get("unit") or 1),
        dropout=options.get("dropout"),
        rank_dropout=options.get("rank_dropout"),
        module_dropout=options.get("module_dropout"),
    )
