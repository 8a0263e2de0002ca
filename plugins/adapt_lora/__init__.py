"""LierLa: kohya's LoRA on Linear and 1x1 conv layers (and 3x3 convs when ``conv_dim`` is set)."""

from adapt_lora.family import LoRAFamilyPlugin
from adapt_lora.math import lora_delta, lora_factors
from adapt_lora.module import LoRAModule

__all__ = ["LoRAFamilyPlugin", "LoRAModule", "lora_delta", "lora_factors"]
