"""Stable Diffusion 1.x/2.x as model families: one CLIP text encoder and a U-Net.

:class:`StableDiffusionFamily` is parametrised by what differs between SD 1.x, SD 2.x and the
tiny demo model (bundled configs, text-encoder layout in single files, where the tokenizer
is cached, the names written into metadata). A third-party family with the same shape may
subclass it. diffusers and transformers are imported by the methods, not by this module,
so listing the installed families stays instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters_core.errors import ModelLoadError
from adapters_core.family import Component, ModelFamily, TextOutputs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapters_core.layer_table import LayerTable
    from adapters_core.models.bundled import ConfigName
    from adapters_core.models.components import SDModel
    from adapters_core.targets import Target

HIDDEN_STATE = "hidden_state"
"""The one tensor an SD 1.x/2.x prompt encodes to: the text encoder's hidden states."""

SD_COMPONENTS: tuple[Component, ...] = (
    Component("text_encoder", "lora_te", "text_encoder"),
    Component("unet", "lora_unet", "unet"),
)
# Diffusers pipelines whose folders hold an SD 1.x/2.x model (model_index.json _class_name).
SD_PIPELINES = frozenset({
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionDepth2ImgPipeline", "StableDiffusionUpscalePipeline",
})


@dataclass(frozen=True)
class Variant:
    """What one prediction type of a family is called and built from."""

    config: ConfigName  # bundled config set
    base_model_version: str  # ss_base_model_version
    architecture: str  # modelspec.architecture
    resolution: int


@dataclass(frozen=True)
class SDKind:
    """What detection tells an SD model apart by: its bundled config set and text encoder."""

    key: str  # what detect_architecture returns: sd_v1, sd_v2, tiny
    openclip: bool  # SD 2.x's OpenCLIP text encoder (fused q/k/v in single files)


class StableDiffusionFamily(ModelFamily):
    """SD 1.x/2.x-shaped models: a CLIP text encoder (``lora_te``) and a U-Net (``lora_unet``)."""

    components = SD_COMPONENTS

    def __init__(
        self,
        name: str,
        description: str,
        kind: SDKind,
        epsilon: Variant,
        v: Variant,
        *,
        model_names: Mapping[str, bool],
        cached_tokenizer: tuple[str, str],
        bundled_tokenizer: bool = False,
    ) -> None:
        self.name = name
        self.description = description
        self.kind = kind
        self.variants = {False: epsilon, True: v}
        self.kohya_v2 = kind.openclip
        self.base_model_versions = tuple(dict.fromkeys(v.base_model_version for v in self.variants.values()))
        self.model_names = dict(model_names)
        self.cached_tokenizer = cached_tokenizer
        self.bundled_tokenizer = bundled_tokenizer

    # -- names -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool) -> str:
        return self.variants[v_prediction].base_model_version

    def architecture(self, v_prediction: bool) -> str:
        return self.variants[v_prediction].architecture

    def default_resolution(self, v_prediction: bool) -> int:
        return self.variants[v_prediction].resolution

    def foreign_module_hint(self, module_name: str) -> str | None:
        if module_name.startswith(("lora_te1_", "lora_te2_")):
            return "SDXL text-encoder module; SD 1.x/2.x models have one text encoder (lora_te_)"
        return None

    def config(self, component: str) -> dict[str, Any]:
        from adapters_core.models.bundled import config_dir, read_config

        return read_config(config_dir(self.variants[False].config), component)

    def layer_table(self) -> LayerTable:
        """Shipped in ``tables/`` (``scripts/write_layer_tables.py``), so tools reading files start fast."""
        from adapters_core.layer_table import shipped_or_built

        return shipped_or_built(self, Path(__file__).with_name("tables"))

    def module_aliases(self, components: Mapping[str, nn.Module | None], targets: Iterable[Target]) -> dict[str, str]:
        from adapters_core.keys import ldm_unet_aliases

        return ldm_unet_aliases(components.get("unet"), targets)

    # -- detection -------------------------------------------------------------------------------
    def detect_checkpoint(self, shapes: Mapping[str, torch.Tensor], path: Path) -> bool:
        from adapt_sd.detection import detect_architecture, looks_like_sdxl

        if looks_like_sdxl(shapes):  # the SDXL family's, which names what such a file lacks
            return False
        return detect_architecture(shapes, path) == self.kind.key

    def detect_diffusers(self, folder: Path, model_index: Mapping[str, Any]) -> bool:
        from adapt_sd.detection import unet_kind

        if model_index.get("_class_name", "StableDiffusionPipeline") not in SD_PIPELINES:
            return False
        if model_index.get("text_encoder_2") is not None:  # not an SD 1.x/2.x component
            return False
        return unet_kind(folder) == self.kind.key

    # -- loading and saving -------------------------------------------------------------------
    def load(
        self,
        path: Path,
        *,
        v_prediction: bool | None,
        dtype: torch.dtype,
        tokenizer_path: Path | None,
        need_tokenizer: bool,
    ) -> SDModel:
        from adapt_sd.loading import load_diffusers, load_single_file

        if path.is_dir():
            return load_diffusers(self, path, v_prediction, dtype, tokenizer_path, need_tokenizer)
        return load_single_file(self, path, bool(v_prediction), dtype, tokenizer_path, need_tokenizer)

    def build_components(
        self, *, device: str = "meta", folder: Path | None = None, v_prediction: bool = False
    ) -> dict[str, nn.Module]:
        from adapt_sd.loading import build_components

        return build_components(self, device, folder, v_prediction)

    def checkpoint_state_dict(self, model: SDModel) -> dict[str, torch.Tensor]:
        from adapters_core.models.ldm_layout import UNetLayout, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm

        return {
            **unet_to_ldm(model.unet.state_dict(), UNetLayout.from_config(model.unet.config)),
            **text_encoder_to_ldm(model.text_encoder.state_dict(), v2=self.kind.openclip),
            **vae_to_ldm(model.vae.state_dict()),
        }

    def checkpoint_module_keys(self, shapes: Mapping[str, torch.Tensor], v_prediction: bool) -> dict[str, list[str]]:
        from adapt_sd.checkpoint_names import ldm_module_names
        from adapters_core.models.bundled import load_config

        return ldm_module_names(shapes, load_config(self.variants[v_prediction].config, "unet"), self.kind.openclip)

    # -- prompts and pipeline ----------------------------------------------------------------
    def encode_text(
        self,
        components: Mapping[str, nn.Module],
        tokenizers: Mapping[str, Any],
        prompts: list[str],
        *,
        max_token_length: int | None,
        clip_skip: int | None,
    ) -> TextOutputs:
        from adapters_core.models import clip_text

        tokenizer = tokenizers.get("text_encoder")
        if tokenizer is None:
            raise ModelLoadError("the model was loaded without a tokenizer; pass one (--tokenizer)")
        ids = clip_text.tokenize(tokenizer, prompts, max_token_length)
        return {HIDDEN_STATE: clip_text.encode(components["text_encoder"], ids, clip_skip)}

    def check_clip_skip(self, components: Mapping[str, nn.Module], clip_skip: int | None) -> None:
        from adapters_core.models.clip_text import check_clip_skip

        check_clip_skip(components["text_encoder"], clip_skip)

    def unet_conditioning(self, outputs: TextOutputs, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {"encoder_hidden_states": outputs[HIDDEN_STATE]}

    def pipeline_conditioning(self, positive: TextOutputs, negative: TextOutputs) -> dict[str, Any]:
        return {"prompt_embeds": positive[HIDDEN_STATE], "negative_prompt_embeds": negative[HIDDEN_STATE]}

    def build_pipeline(self, model: SDModel, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=scheduler,
            safety_checker=None,  # type: ignore[arg-type]  # diffusers accepts None (documented), types say not
            feature_extractor=None,  # type: ignore[arg-type]
            requires_safety_checker=False,
        )

    def owns_pipeline(self, pipe: Any) -> bool:
        from adapt_sd.detection import kind_of_unet_config

        if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "unet", None) is None:
            return False
        return kind_of_unet_config(pipe.unet.config) == self.kind.key

