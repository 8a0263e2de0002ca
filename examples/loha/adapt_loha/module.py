"""The LoHa module: the layer's input through the delta weight, added to the layer's output."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapt_loha.math import loha_delta
from adapters_core.lora_keys import resolve_alpha
from adapters_core.module import AdapterModule


class LoHaModule(AdapterModule):
    """``y = layer(x) + m * op(x, dW)`` with ``op`` the layer's own linear map or convolution
    (same stride, padding, dilation, groups) and ``dW`` from :func:`loha_delta`.

    Initialisation (as LyCORIS): ``w1a`` ~ N(0, 0.1), ``w1b`` and ``w2b`` ~ N(0, 1), ``w2a`` = 0,
    so a fresh module adds exactly nothing while every factor still gets a gradient.
    """

    alpha: torch.Tensor  # a buffer

    def __init__(self, name: str, layer: nn.Module, dim: int, alpha: float | None) -> None:
        super().__init__(name)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{name}: LoHa adapts Linear and Conv2d layers, not {type(layer).__name__}")
        weight_shape = tuple(layer.weight.shape)
        out_dim, in_dim = weight_shape[0], int(torch.Size(weight_shape[1:]).numel())
        self.lora_dim = dim
        self.weight_shape = weight_shape
        self.conv_args: dict[str, Any] | None = None
        if isinstance(layer, nn.Conv2d):
            self.conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                              "groups": layer.groups}
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, dim).normal_(std=0.1))
        self.hada_w1_b = nn.Parameter(torch.empty(dim, in_dim).normal_(std=1.0))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_dim, dim))
        self.hada_w2_b = nn.Parameter(torch.empty(dim, in_dim).normal_(std=1.0))
        self.register_buffer("alpha", torch.tensor(resolve_alpha(alpha, dim)))

    def delta_weight(self) -> torch.Tensor:
        return loha_delta(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.alpha, self.weight_shape)

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        weight = (self.delta_weight() * self.multiplier).to(x.dtype)
        if self.conv_args is None:
            out = F.linear(x, weight)
        else:
            out = F.conv2d(x, weight, None, **self.conv_args)
        return base + out.to(base.dtype)
