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
from adapters_core.targets import (
    TEXT_ENCODER_PREFIX,
    UNET_PREFIX,
    Target,
    kohya_name,
    text_encoder_module_path,
    unet_targets,
)

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


# -- diffusers / PEFT components ------------------------------------------------------------
# The kohya prefix of each component a diffusers or PEFT LoRA names. SD 1.x/2.x have one text
# encoder (``lora_te``); a file that also names ``text_encoder_2`` is SDXL's, whose encoders
# are ``lora_te1``/``lora_te2`` (those modules then match no layer of an SD 1.x/2.x model).
UNET_COMPONENT = "unet"
TEXT_ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2")
DIFFUSERS_COMPONENTS = (UNET_COMPONENT, *TEXT_ENCODER_COMPONENTS)
_SD_PREFIXES = {UNET_COMPONENT: UNET_PREFIX, "text_encoder": TEXT_ENCODER_PREFIX}
_SDXL_PREFIXES = {UNET_COMPONENT: UNET_PREFIX, "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def component_prefixes(components: Iterable[str]) -> dict[str, str]:
    """``{component: kohya prefix}`` for the components one diffusers/PEFT file names."""
    return dict(_SDXL_PREFIXES) if "text_encoder_2" in set(components) else dict(_SD_PREFIXES)


def component_module_name(prefix: str, component: str, path: str) -> str:
    """The kohya name of a layer a diffusers/PEFT key names by component and module path.

    Text-encoder paths are read in both spellings (``text_model.encoder.layers.N...`` and
    transformers 5's ``encoder.layers.N...``).
    """
    if component in TEXT_ENCODER_COMPONENTS:
        return kohya_name(prefix, text_encoder_module_path(path))
    return kohya_name(prefix, path)
