"""Entry point of the SDXL model families (group ``adapt.models``)."""

from __future__ import annotations

from collections.abc import Callable

from adapt_sdxl.family import SDXLFamily
from adapters_core.family import ModelFamily
from adapters_core.models.bundled import TINY_TOKENIZER_DIR
from adapters_core.plugins import hookimpl

SDXL = SDXLFamily("sdxl", "SDXL 1.0", "sdxl_base", model_names={"sdxl": False, "sdxl_base": False})
TINY_SDXL = SDXLFamily(
    "tiny_sdxl",
    "tiny SDXL-shaped (demo)",
    "tiny_sdxl",
    model_names={"tiny_sdxl": False},
    bundled_tokenizer=TINY_TOKENIZER_DIR,
)


class SDXLFamiliesPlugin:
    @hookimpl
    def register_model_families(self, register: Callable[[ModelFamily], None]) -> None:
        for family in (SDXL, TINY_SDXL):
            register(family)


plugin = SDXLFamiliesPlugin()
