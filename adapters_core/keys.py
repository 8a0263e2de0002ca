"""Normalise the module names found in adapter files to the names :mod:`targets` produces.

Readers in the wild meet two spellings besides the standard one: U-Net modules named after
the original LDM layout (``lora_unet_input_blocks_1_1_proj_in``), and text-encoder modules
without the ``text_model_`` level (written under transformers 5 by some tools). LDM names
are derived from the U-Net's own config through the checkpoint key table, so any depth and
any ``layers_per_block`` map correctly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

# A text-encoder module name of any family (``lora_te_``, SDXL's ``lora_te1_``/``lora_te2_``)
# written without the ``text_model_`` level.
_TE_WITHOUT_TEXT_MODEL = re.compile(rf"^({TEXT_ENCODER_PREFIX}\d*)_(?!text_model_)")


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
    text_encoder = _TE_WITHOUT_TEXT_MODEL.match(name)
    if text_encoder is not None:
        return f"{text_encoder.group(1)}_text_model_{name[text_encoder.end():]}"
    aliases = sd_unet_aliases() if ldm_aliases is None else ldm_aliases
    return aliases.get(name, name)


# -- diffusers / PEFT components ------------------------------------------------------------
# diffusers and PEFT files name components (``unet``, ``text_encoder``, SDXL's ``text_encoder_2``);
# the installed family with those components gives each one's kohya prefix.
UNET_COMPONENT = "unet"
TEXT_ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2")
DIFFUSERS_COMPONENTS = (UNET_COMPONENT, *TEXT_ENCODER_COMPONENTS)


def component_prefixes(components: Iterable[str], family: ModelFamily | None = None) -> dict[str, str]:
    """``{component: kohya prefix}`` of ``family``, or of the installed family that has the
    components one diffusers/PEFT file names (SD 1.x: ``lora_te``; with ``text_encoder_2``
    SDXL's ``lora_te1``/``lora_te2``)."""
    from adapters_core.plugins import get_registry

    owner = family or get_registry().family_for_components(components)
    return {component.name: component.kohya_prefix for component in owner.components}


def component_module_name(prefix: str, component: str, path: str) -> str:
    """The kohya name of a layer a diffusers/PEFT key names by component and module path.

    Text-encoder paths are read in both spellings (``text_model.encoder.layers.N...`` and
    transformers 5's ``encoder.layers.N...``).
    """
    if component in TEXT_ENCODER_COMPONENTS:
        return kohya_name(prefix, text_encoder_module_path(path))
    return kohya_name(prefix, path)
