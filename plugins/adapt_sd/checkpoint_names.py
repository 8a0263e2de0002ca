"""The kohya module(s) each weight of an SD 1.x/2.x LDM single file holds, for the streaming
merge. Key tables only: no model library is imported (``adapt merge --sd_model`` starts fast)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from adapters_core.errors import FormatError
from adapters_core.models.ldm_layout import TE_V1_PREFIX, TE_V2_PREFIX, UNET_PREFIX, UNetLayout, text_encoder_from_ldm
from adapters_core.targets import kohya_name, text_encoder_module_path

_MANY_LAYERS = 1000  # reading single keys of an OpenCLIP encoder: any layer index is valid


def ldm_module_names(
    shapes: Mapping[str, torch.Tensor], unet_config: Mapping[str, object], openclip: bool
) -> dict[str, list[str]]:
    """LDM weight key -> the kohya module names it holds, in order along dim 0 (q, k, v for SD2's
    fused ``in_proj_weight``). Keys of no adaptable layer are absent."""
    key_map = UNetLayout.from_config(unet_config).key_map()
    names: dict[str, list[str]] = {}
    for key, tensor in shapes.items():
        if key.startswith(UNET_PREFIX):
            path = key_map.from_ldm(key[len(UNET_PREFIX) :])
            if path and path.endswith(".weight"):
                names[key] = [kohya_name("lora_unet", path[: -len(".weight")])]
        elif key.startswith((TE_V1_PREFIX, TE_V2_PREFIX)):
            try:
                paths = text_encoder_from_ldm({key: tensor}, v2=openclip, num_layers=_MANY_LAYERS)
            except FormatError:
                continue
            found = [
                kohya_name("lora_te", text_encoder_module_path(p[: -len(".weight")]))
                for p in paths
                if p.endswith(".weight")
            ]
            if found:
                names[key] = found
    return names
