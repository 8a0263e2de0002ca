"""Entry point of the C3Lier type (``--network c3lier``): LierLa's module and math, conv on."""

from __future__ import annotations

from typing import Any

from adapt_lora.family import CONV_OPTIONS, DROPOUT_OPTIONS, LoRAFamilyPlugin
from adapters_core.types import NetworkType


def enable_conv(options: dict[str, Any]) -> dict[str, Any]:
    """Without ``conv_dim``, 3x3 convs get ``network_dim`` and ``network_alpha``."""
    if not options.get("conv_dim") and not options.get("conv_block_dims"):
        options["conv_dim"] = options["network_dim"]
        if options.get("conv_alpha") is None:
            options["conv_alpha"] = options["network_alpha"]
    return options


C3LIER = NetworkType(
    name="c3lier",
    description="LoRA-C3Lier: LierLa plus 3x3 convs of ResNet blocks and down/up samplers "
    "(conv_dim/conv_alpha; default network_dim/network_alpha)",
    options=CONV_OPTIONS + DROPOUT_OPTIONS,
    kohya_module="networks.lora",
    prepare_options=enable_conv,
)

plugin = LoRAFamilyPlugin(C3LIER)
