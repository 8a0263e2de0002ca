"""Entry point of the SDXL model families (group ``adapt.models``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapt_sdxl.family import SDXLFamily
from adapters_core.family import ModelFamily
from adapters_core.models.bundled import TINY_TOKENIZER_DIR
from adapters_core.plugins import hookimpl

SDXL = SDXLFamily("sdxl", "SDXL 1.0", "sdxl_base", model_names={"sdxl": False, "sdxl_base": False})


class TinySDXLFamily(SDXLFamily):
    """The tiny SDXL-shaped model: ``adapt quickstart --model_family tiny_sdxl``'s."""

    has_demo_model = True

    def write_demo_model(self, folder: Path, *, seed: int) -> None:
        from adapt_sdxl.tiny import write_tiny_sdxl_model  # builds modules: not at plugin load

        write_tiny_sdxl_model(folder, seed=seed, overwrite=True)


TINY_SDXL = TinySDXLFamily(
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
