"""The LoRA module: ``y = W x + m * (alpha/r) * up(down(x))`` with kohya's dropouts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapt_lora.math import lora_scale
from adapters_core.errors import NetworkOptionError
from adapters_core.lora_keys import resolve_alpha
from adapters_core.module import AdapterModule


class LoRAModule(AdapterModule):
    """Down projection (the layer's own kernel, stride and padding) then a 1x1 up projection.

    ``lora_down`` is initialised like ``nn.Linear`` (Kaiming uniform, a=sqrt(5)) and
    ``lora_up`` with zeros, so a new module changes nothing. ``dropout`` drops entries of
    ``down(x)``; ``rank_dropout`` drops whole rank components per sample and rescales by
    1/(1-p); ``module_dropout`` skips the module for a whole step. All three act only in
    training mode.
    """

    alpha: torch.Tensor  # a buffer

    def __init__(
        self,
        name: str,
        layer: nn.Module,
        dim: int,
        alpha: float | None,
        *,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
    ) -> None:
        super().__init__(name)
        if dim <= 0:
            raise NetworkOptionError(f"{name}: rank must be positive, got {dim}")
        self.lora_dim = dim
        self.is_conv = isinstance(layer, nn.Conv2d)
        if self.is_conv:
            assert isinstance(layer, nn.Conv2d)
            self.stride = layer.stride
            self.padding = layer.padding
            self.lora_down: nn.Conv2d | nn.Linear = nn.Conv2d(  # torch types kernel_size etc. as tuple[int, ...]
                layer.in_channels, dim, layer.kernel_size, layer.stride, layer.padding, bias=False  # type: ignore[arg-type]
            )
            self.lora_up: nn.Conv2d | nn.Linear = nn.Conv2d(dim, layer.out_channels, 1, 1, bias=False)
        else:
            assert isinstance(layer, nn.Linear)
            self.lora_down = nn.Linear(layer.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(resolve_alpha(alpha, dim)))
        self.scale = lora_scale(alpha, dim)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_scale())
        self.dropout = dropout or 0.0
        self.rank_dropout = rank_dropout or 0.0
        self.module_dropout = module_dropout or 0.0

    def refresh_scale(self) -> None:
        """Recompute the cached scale after ``alpha`` was loaded from a file."""
        self.scale = lora_scale(self.alpha.item(), self.lora_dim)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(down weight, up weight, scale)`` used by the forward pass (DyLoRA overrides it)."""
        return self.lora_down.weight, self.lora_up.weight, self.scale

    def _project(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            hidden = F.conv2d(x, down, stride=self.stride, padding=self.padding)
        else:
            hidden = F.linear(x, down)
        if self.training and self.dropout > 0:
            hidden = F.dropout(hidden, p=self.dropout)
        if self.training and self.rank_dropout > 0:
            keep = (torch.rand(hidden.shape[0], self.lora_dim, device=hidden.device) > self.rank_dropout)
            keep = keep.to(hidden.dtype)
            if self.is_conv:
                keep = keep[:, :, None, None]
            elif hidden.dim() == 3:
                keep = keep[:, None, :]
            hidden = hidden * keep
        return F.conv2d(hidden, up) if self.is_conv else F.linear(hidden, up)

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        if self.training and self.module_dropout > 0 and torch.rand(()) < self.module_dropout:
            return base
        down, up, scale = self.factors()
        if self.training and self.rank_dropout > 0:
            scale = scale / (1.0 - self.rank_dropout)
        out = self._project(x.to(down.dtype), down, up)
        return base + (out * (self.multiplier * scale)).to(base.dtype)
