"""Entry point of the Stable Diffusion 1.x/2.x model families (group ``adapt.models``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapt_sd.family import SDKind, StableDiffusionFamily, Variant
from adapters_core.family import ModelFamily
from adapters_core.plugins import hookimpl

_SD1 = Variant("sd_v1", "sd_v1", "stable-diffusion-v1", 512)
_CLIP_L = ("openai/clip-vit-large-patch14", "")

SD1 = StableDiffusionFamily(
    "sd1",
    "SD 1.x",
    SDKind("sd_v1", openclip=False),
    _SD1,
    _SD1,  # kohya allows v-prediction on SD 1.x; the names stay SD 1.x's
    model_names={"sd_v1": False, "sd1": False, "sd15": False},
    cached_tokenizer=_CLIP_L,
)
SD2 = StableDiffusionFamily(
    "sd2",
    "SD 2.x",
    SDKind("sd_v2", openclip=True),
    Variant("sd_v2", "sd_v2", "stable-diffusion-v2-512", 512),
    Variant("sd_v2_v", "sd_v2_v", "stable-diffusion-v2-768-v", 768),
    model_names={"sd_v2": False, "sd2": False, "sd_v2_v": True, "sd2-v": True, "sd2v": True},
    cached_tokenizer=("stabilityai/stable-diffusion-2", "tokenizer/"),
)


class TinySDFamily(StableDiffusionFamily):
    """The tiny SD 1.x-style model: ``adapt quickstart``'s."""

    has_demo_model = True

    def write_demo_model(self, folder: Path, *, seed: int) -> None:
        from adapters_core.models import write_tiny_model  # builds modules: not at plugin load

        write_tiny_model(folder, seed=seed, overwrite=True)


TINY = TinySDFamily(
    "tiny",
    "tiny SD 1.x-style (demo)",
    SDKind("tiny", openclip=False),
    Variant("tiny", "sd_v1", "stable-diffusion-v1", 512),
    Variant("tiny", "sd_v1", "stable-diffusion-v1", 512),
    model_names={"tiny": False},
    cached_tokenizer=_CLIP_L,
    bundled_tokenizer=True,
)


class SDFamiliesPlugin:
    @hookimpl
    def register_model_families(self, register: Callable[[ModelFamily], None]) -> None:
        for family in (SD1, SD2, TINY):
            register(family)


plugin = SDFamiliesPlugin()
