"""The ``loha`` network type: the hooks of adapt, implemented for LoHa.

This module is the plugin object (the ``adapt.networks`` entry point names it). adapt asks
it only about the type it registers, so the hooks leave out the ``network`` argument.
``merge_weights`` is not implemented: the core's default (``weight + ratio * delta``) fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from adapt_loha.math import KEYS, loha_delta, loha_factors
from adapt_loha.module import LoHaModule
from adapters_core import hookimpl
from adapters_core.lora_keys import resolve_alpha
from adapters_core.types import ModuleSpec, NetworkOption, NetworkType

NAME = "loha"
# LyCORIS-only features this plugin does not implement: a file using them is not loaded as LoHa.
_UNSUPPORTED = ("hada_t1", "hada_t2", "dora_scale")

LOHA = NetworkType(
    name=NAME,
    description="LoHa (LyCORIS): dW = (w1a @ w1b) * (w2a @ w2b) * alpha/dim, up to rank dim^2 for 2*dim "
    "factors; Linear and 1x1 convs, with conv_dim also 3x3 convs; files load in A1111/ComfyUI",
    options=(
        NetworkOption("conv_dim", int, None, "dim of 3x3 conv modules (enables ResNet blocks and samplers)"),
        NetworkOption("conv_alpha", float, None, "alpha of 3x3 conv modules (default 1)"),
    ),
    kohya_module="lycoris.kohya",
)


@hookimpl
def register_networks(register: Callable[[NetworkType], None]) -> None:
    register(LOHA)


@hookimpl
def create_module(spec: ModuleSpec) -> nn.Module | None:
    if not isinstance(spec.layer, (nn.Linear, nn.Conv2d)):
        return None
    return LoHaModule(spec.name, spec.layer, spec.rank, spec.alpha)


@hookimpl
def state_dict_keys(spec: ModuleSpec) -> list[str]:
    return list(KEYS)


@hookimpl
def delta_weight(tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
    return loha_delta(
        tensors["hada_w1_a"], tensors["hada_w1_b"], tensors["hada_w2_a"], tensors["hada_w2_b"],
        tensors.get("alpha"), weight_shape,
    )


@hookimpl
def extract(delta: torch.Tensor, rank: int, options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return loha_factors(
        delta, rank, alpha=options.get("alpha"), method=options.get("svd", "exact"),
        clamp_quantile=options.get("clamp_quantile"),
    )


@hookimpl
def module_options_from_tensors(name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    if "hada_w1_b" not in tensors or any(key in tensors for key in _UNSUPPORTED):
        return None
    dim = int(tensors["hada_w1_b"].shape[0])
    return {"dim": dim, "alpha": resolve_alpha(tensors.get("alpha"), dim)}


@hookimpl
def detect_network(keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
    return NAME if any(key.endswith(".hada_w1_a") for key in keys) else None
