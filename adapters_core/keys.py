"""Normalise the module names found in adapter files to the names :mod:`targets` produces.

Readers in the wild meet two spellings besides the standard one: U-Net modules named after
the original LDM layout (``lora_unet_input_blocks_1_1_proj_in``), and text-encoder modules
without the ``text_model_`` level (written under transformers 5 by some tools). LDM names
are derived from the U-Net's own config through the checkpoint key table, so any depth and
any ``layers_per_block`` map correctly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from torch import nn

from adapters_core.models.ldm_layout import UNetLayout
from adapters_core.targets import TEXT_ENCODER_PREFIX, UNET_PREFIX, Target, kohya_name, unet_targets

_TE_STANDARD = f"{TEXT_ENCODER_PREFIX}_text_model_"


def ldm_unet_aliases(unet: nn.Module | None, targets: Iterable[Target]) -> dict[str, str]:
    """``{LDM-style kohya name: standard kohya name}`` for the U-Net targets of ``unet``."""
    config = getattr(unet, "config", None)
    if config is None:
        return {}
    key_map = UNetLayout.from_config(config).key_map()
    aliases: dict[str, str] = {}
    for target in targets:
        if target.component != "unet" or not target.module_path:
            continue
        ldm = key_map.to_ldm(f"{target.module_path}.weight")
        if ldm is not None:
            aliases[kohya_name(UNET_PREFIX, ldm.removesuffix(".weight"))] = target.name
    return aliases


@functools.cache
def sd_unet_aliases() -> dict[str, str]:
    """The LDM aliases of the SD 1.x/2.x U-Net layout (both share their block structure)."""
    from adapters_core.models import build_sd15_unet

    unet = build_sd15_unet(device="meta")
    return ldm_unet_aliases(unet, unet_targets(unet, include_conv_blocks=True))


def normalize_module_name(name: str, ldm_aliases: Mapping[str, str] | None = None) -> str:
    """The standard (diffusers-path) kohya name of a module name read from a file.

    ``ldm_aliases`` comes from :func:`ldm_unet_aliases` for the model at hand; without it
    the SD 1.x/2.x layout is assumed (tools that read adapter files without a model).
    """
    if name.startswith(f"{TEXT_ENCODER_PREFIX}_") and not name.startswith(_TE_STANDARD):
        return _TE_STANDARD + name[len(TEXT_ENCODER_PREFIX) + 1 :]
    aliases = sd_unet_aliases() if ldm_aliases is None else ldm_aliases
    return aliases.get(name, name)
