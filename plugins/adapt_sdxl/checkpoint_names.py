"""The kohya module(s) each weight of an SDXL single file (SGM layout) holds, for the streaming
merge. Key tables only: no model library is imported (``adapt merge --sd_model`` starts fast)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from adapt_sdxl.layout import TE1_PREFIX, TE2_PREFIX, UNET_PREFIX
from adapters_core.targets import kohya_name

if TYPE_CHECKING:
    from adapt_sdxl.family import SDXLFamily


def sgm_module_names(family: SDXLFamily, shapes: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Single-file weight key -> the kohya module names it holds, in order along dim 0 (q, k, v
    for OpenCLIP's fused ``in_proj_weight``). Keys of no adaptable layer are absent."""
    names: dict[str, list[str]] = {}
    unet_part = next(part for part in family.components if part.role == "unet")
    te1_part, te2_part = (part for part in family.components if part.role == "text_encoder")
    for key in shapes:
        if not key.endswith(".weight") and not key.endswith("in_proj_weight"):
            continue
        if key.startswith(UNET_PREFIX):
            ldm_path = key[len(UNET_PREFIX) : -len(".weight")]
            names[key] = [kohya_name(unet_part.kohya_prefix, ldm_path)]
        elif key.startswith(TE1_PREFIX):
            path = key[len(TE1_PREFIX) : -len(".weight")]
            names[key] = [kohya_name(te1_part.kohya_prefix, path)]
        elif key.startswith(TE2_PREFIX):
            found = _openclip_module_paths(key[len(TE2_PREFIX) :])
            if found:
                names[key] = [kohya_name(te2_part.kohya_prefix, path) for path in found]
    return names


_OPENCLIP_LAYERS = {"attn.out_proj.weight": "self_attn.out_proj", "mlp.c_fc.weight": "mlp.fc1",
                    "mlp.c_proj.weight": "mlp.fc2"}


def _openclip_module_paths(key: str) -> list[str]:
    """The text-model module paths one OpenCLIP weight key holds (three for ``in_proj_weight``)."""
    head, _, rest = key.partition(".resblocks.")
    if head != "transformer" or not rest:
        return []
    layer, _, inner = rest.partition(".")
    base = f"text_model.encoder.layers.{layer}."
    if inner == "attn.in_proj_weight":
        return [f"{base}self_attn.{letter}_proj" for letter in "qkv"]
    return [base + _OPENCLIP_LAYERS[inner]] if inner in _OPENCLIP_LAYERS else []
