"""Normalise the module names found in adapter files to the names :mod:`targets` produces.

Readers in the wild meet three spellings besides the standard one: U-Net modules named
after the original LDM layout (``lora_unet_input_blocks_1_1_proj_in``), and text-encoder
modules without the ``text_model_`` level (written under transformers 5 by some tools).
"""

from __future__ import annotations

import re

_RESNET_INNER = {
    "in_layers_2": "conv1",
    "out_layers_3": "conv2",
    "emb_layers_1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
_LDM_RE = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(?:(\d+)_)?(\d+)_(.+)$")
_ATTENTION_INNER = ("proj_in", "proj_out", "transformer_blocks", "norm")


def _resnet_inner(rest: str) -> str:
    for ldm, diffusers in _RESNET_INNER.items():
        if rest == ldm or rest.startswith(ldm + "_"):
            return diffusers + rest[len(ldm):]
    return rest


def _ldm_to_diffusers(name: str, layers_per_block: int) -> str:
    match = _LDM_RE.match(name)
    if match is None:
        return name
    part, block_text, sub_text, rest = match.groups()
    sub = int(sub_text)
    if part == "middle_block":
        # middle_block_N_rest: the regex put N in sub_text only when there was no block number
        index = int(block_text) if block_text is not None else sub
        if block_text is not None:
            rest = f"{sub_text}_{rest}"
        mapped = {0: "resnets_0", 1: "attentions_0", 2: "resnets_1"}.get(index)
        if mapped is None:
            return name
        inner = rest if mapped.startswith("attentions") else _resnet_inner(rest)
        return f"lora_unet_mid_block_{mapped}_{inner}"
    if block_text is None:
        return name
    block = int(block_text)
    per_level = layers_per_block + 1
    if part == "input_blocks":
        if block == 0:
            return name
        level, position = divmod(block - 1, per_level)
        if position == layers_per_block:
            return f"lora_unet_down_blocks_{level}_downsamplers_0_conv" if rest == "conv" or rest.startswith("op") else name
        if sub == 0:
            return f"lora_unet_down_blocks_{level}_resnets_{position}_{_resnet_inner(rest)}"
        return f"lora_unet_down_blocks_{level}_attentions_{position}_{rest}"
    level, position = divmod(block, per_level)
    if sub == 0:
        return f"lora_unet_up_blocks_{level}_resnets_{position}_{_resnet_inner(rest)}"
    if sub == 1 and rest.startswith(_ATTENTION_INNER):
        return f"lora_unet_up_blocks_{level}_attentions_{position}_{rest}"
    if rest == "conv":
        return f"lora_unet_up_blocks_{level}_upsamplers_0_conv"
    return name


def normalize_module_name(name: str, layers_per_block: int = 2) -> str:
    """The standard (diffusers-path) kohya name of a module name read from a file."""
    if name.startswith("lora_te_") and not name.startswith("lora_te_text_model_"):
        return "lora_te_text_model_" + name[len("lora_te_"):]
    if name.startswith("lora_unet_"):
        return _ldm_to_diffusers(name, layers_per_block)
    return name
