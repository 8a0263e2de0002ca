"""The hooks shared by every type that stores kohya LoRA keys (LierLa, C3Lier, DyLoRA).

Each of those plugins is an instance of :class:`LoRAFamilyPlugin` with its own
:class:`NetworkType` and module class, so the math is written once. torch is imported by the
hooks, not by this module, so that listing the installed types (``adapt networks``) and
``--help`` stay instant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from adapters_core.lora_keys import ALPHA, DOWN, LORA_KEYS, UP, resolve_alpha
from adapters_core.plugins import hookimpl
from adapters_core.types import ModuleSpec, NetworkOption, NetworkType

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapt_lora.module import LoRAModule

DROPOUT_OPTIONS: tuple[NetworkOption, ...] = (
    NetworkOption("dropout", float, None, "dropout on down(x) during training (--network_dropout)"),
    NetworkOption("rank_dropout", float, None, "probability of dropping each rank component per sample"),
    NetworkOption("module_dropout", float, None, "probability of skipping a module for a step"),
)
CONV_OPTIONS: tuple[NetworkOption, ...] = (
    NetworkOption("conv_dim", int, None, "rank of 3x3 conv modules (enables ResNet blocks and samplers)"),
    NetworkOption("conv_alpha", float, None, "alpha of 3x3 conv modules (default 1)"),
)

ModuleFactory = Callable[["ModuleSpec"], "nn.Module"]


def build_lora_module(spec: ModuleSpec) -> LoRAModule:
    from adapt_lora.module import LoRAModule

    options = spec.options
    return LoRAModule(
        spec.name,
        spec.layer,
        spec.rank,
        spec.alpha,
        dropout=options.get("dropout"),
        rank_dropout=options.get("rank_dropout"),
        module_dropout=options.get("module_dropout"),
    )


class LoRAFamilyPlugin:
    """Hook implementations for one LoRA-keyed type (the host asks it about ``network_type`` only).

    ``detects``: whether files with kohya LoRA keys are read as this type. Only LierLa
    claims them: C3Lier and DyLoRA write ordinary LoRA files, which every tool reads as
    ``lora`` (so, e.g., a resized DyLoRA file records ``networks.lora``, as kohya's does).
    """

    def __init__(
        self, network_type: NetworkType, module_factory: ModuleFactory = build_lora_module, *, detects: bool = False
    ) -> None:
        self.network_type = network_type
        self.module_factory = module_factory
        self.detects = detects

    @hookimpl
    def register_networks(self, register: Callable[[NetworkType], None]) -> None:
        register(self.network_type)

    @hookimpl
    def create_module(self, spec: ModuleSpec) -> nn.Module | None:
        from torch import nn

        if not isinstance(spec.layer, (nn.Linear, nn.Conv2d)):
            return None
        return self.module_factory(spec)

    @hookimpl
    def state_dict_keys(self, spec: ModuleSpec) -> list[str]:
        return list(LORA_KEYS)

    @hookimpl
    def delta_weight(self, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
        from adapt_lora.math import lora_delta

        return lora_delta(tensors[UP], tensors[DOWN], tensors.get(ALPHA), weight_shape)

    @hookimpl
    def extract(self, delta: torch.Tensor, rank: int, options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from adapt_lora.math import lora_factors

        return lora_factors(
            delta,
            rank,
            alpha=options.get("alpha"),
            method=options.get("svd", "exact"),
            clamp_quantile=options.get("clamp_quantile"),
            clip_budget=options.get("clip_budget"),
        )

    @hookimpl
    def module_options_from_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        if DOWN not in tensors:
            return None
        dim = int(tensors[DOWN].shape[0])
        return {"dim": dim, "alpha": resolve_alpha(tensors.get(ALPHA), dim)}

    @hookimpl(trylast=True)  # the catch-all: a type whose keys overlap LoRA's is asked first
    def detect_network(self, keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
        if not self.detects:
            return None
        if any(key.endswith(f".{DOWN}") for key in keys):
            return self.network_type.name
        return None
