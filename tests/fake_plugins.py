"""Plugins used by the plugin-host tests, loaded through faked entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapt_lora.family import LORA_KEYS, LoRAFamilyPlugin
from adapt_lora.module import LoRAModule
from adapters_core import NetworkOption, NetworkType, hookimpl
from adapters_core.module import AdapterModule, merge_additive
from adapters_core.targets import layer_weight
from adapters_core.types import ModuleSpec


class FullDeltaModule(AdapterModule):
    """Stores a full weight delta (zeros at init): the simplest possible additive type."""

    def __init__(self, name: str, layer: nn.Module) -> None:
        super().__init__(name)
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.stride = getattr(layer, "stride", 1)
        self.padding = getattr(layer, "padding", 0)
        self.diff = nn.Parameter(torch.zeros_like(layer_weight(layer), device="cpu"))

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        weight = self.diff.to(x.dtype)
        out = F.conv2d(x, weight, None, self.stride, self.padding) if self.is_conv else F.linear(x, weight)
        return base + self.multiplier * out


class FullDeltaPlugin:
    name = "fulldelta"

    @hookimpl
    def register_networks(self, register: Callable[[NetworkType], None]) -> None:
        register(
            NetworkType(
                self.name,
                "full-rank weight difference (test plugin)",
                options=(NetworkOption("conv_dim", int, 1, "adapt 3x3 convs when > 0"),),
                kohya_module=f"tests.{self.name}",
            )
        )

    @hookimpl
    def create_module(self, network: str, spec: ModuleSpec):
        return FullDeltaModule(spec.name, spec.layer) if network == self.name else None

    @hookimpl
    def state_dict_keys(self, network: str, spec: ModuleSpec):
        return ["diff"] if network == self.name else None

    @hookimpl
    def delta_weight(self, network: str, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size):
        return tensors["diff"].float().reshape(weight_shape) if network == self.name else None

    @hookimpl
    def merge_weights(self, network: str, tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, ratio: float):
        return merge_additive(weight, tensors["diff"].float(), ratio) if network == self.name else None

    @hookimpl
    def extract(self, network: str, delta: torch.Tensor, rank: int, options: Mapping[str, Any]):
        return {"diff": delta.clone()} if network == self.name else None

    @hookimpl
    def module_options_from_tensors(self, network: str, name: str, tensors: Mapping[str, torch.Tensor]):
        return {"dim": 1, "alpha": 1.0} if network == self.name and "diff" in tensors else None

    @hookimpl
    def detect_network(self, keys: frozenset[str], metadata: Mapping[str, str]):
        return self.name if any(key.endswith(".diff") for key in keys) else None


fulldelta = FullDeltaPlugin()


class MetadataOnlyPlugin(FullDeltaPlugin):
    """The same type under another name, without a detector: found through ``ss_network_module`` only."""

    name = "metaonly"
    detect_network = None  # type: ignore[assignment]  # removes the inherited hook: this plugin has no detector


class GainLoRAModule(LoRAModule):
    """LoRA whose output is scaled by a stored ``gain``: its files hold LoRA's keys plus ``gain``."""

    gain: torch.Tensor

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec.name, spec.layer, spec.rank, spec.alpha)
        self.register_buffer("gain", torch.tensor(2.0))

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return base + self.gain * (super().forward(x, base) - base)


class GainLoRAPlugin(LoRAFamilyPlugin):
    """A third-party type whose keys overlap LoRA's; it claims files that carry ``gain``."""

    @hookimpl
    def state_dict_keys(self, spec: ModuleSpec) -> list[str]:
        return [*LORA_KEYS, "gain"]

    @hookimpl
    def delta_weight(self, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
        return super().delta_weight(tensors, weight_shape) * tensors["gain"].float()

    @hookimpl
    def extract(self, delta: torch.Tensor, rank: int, options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {**super().extract(delta, rank, options), "gain": torch.tensor(1.0)}

    @hookimpl
    def detect_network(self, keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
        return self.network_type.name if any(key.endswith(".gain") for key in keys) else None


class WrongSignature:
    @hookimpl
    def create_module(self, network: str, name: str, layer: nn.Module, options: Mapping[str, Any], extra: int):
        return None


class MisspelledHook:
    @hookimpl
    def create_modul(self, network: str, name: str, layer: nn.Module, options: Mapping[str, Any]):
        return None


class SilentExtract(FullDeltaPlugin):
    """A type whose extract gives no answer."""

    name = "silent"

    @hookimpl
    def extract(self, network: str, delta: torch.Tensor, rank: int, options: Mapping[str, Any]):
        return None


class MissingRequiredHook:
    """Registers a type but cannot compute its delta."""

    @hookimpl
    def register_networks(self, register: Callable[[NetworkType], None]) -> None:
        register(NetworkType("nodelta", "a type without delta_weight"))

    @hookimpl
    def create_module(self, network: str, spec: ModuleSpec):
        return None


metaonly = MetadataOnlyPlugin()
gainlora = GainLoRAPlugin(NetworkType("gainlora", "LoRA times a stored gain (test plugin)", kohya_module="tests.gainlora"),
                          GainLoRAModule)
missing_hook = MissingRequiredHook()
silent = SilentExtract()
duplicate = LoRAFamilyPlugin(NetworkType("lora", "a second 'lora'"))
wrong_signature = WrongSignature()
misspelled = MisspelledHook()
