"""Entry point of the LierLa type (``--network lora``)."""

from __future__ import annotations

from adapt_lora.family import CONV_OPTIONS, DROPOUT_OPTIONS, LoRAFamilyPlugin
from adapters_core.types import NetworkType

LORA = NetworkType(
    name="lora",
    description="LoRA-LierLa: Linear and 1x1 conv layers of the U-Net transformer blocks and the text "
    "encoder; with conv_dim also 3x3 convs (= C3Lier)",
    options=CONV_OPTIONS + DROPOUT_OPTIONS,
    kohya_module="networks.lora",
    aliases=("lierla",),
)

# Every kohya-keyed file (LierLa, C3Lier, DyLoRA output) is detected as this type.
plugin = LoRAFamilyPlugin(LORA, detects=True)
