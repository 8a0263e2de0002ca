"""SDXL as a model family: CLIP ViT-L (``lora_te1``), OpenCLIP ViT-bigG with its projection
(``lora_te2``) and a U-Net with the size/pooled-text embedding (``lora_unet``), in kohya
sd-scripts' naming.

kohya names SDXL's U-Net layers after the original (LDM) layout
(``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``): :meth:`module_path_for_name`
maps a diffusers module path through the U-Net's LDM key table; the diffusers-path spelling is
accepted when reading. diffusers and transformers are imported by the methods, so listing the
installed families stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt_sdxl.blocks import SDXL_BLOCKS
from adapters_core.errors import ConfigError
from adapters_core.family import Component, ModelFamily, TextOutputs
from adapters_core.models.bundled import read_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapters_core.layer_table import LayerTable
    from adapters_core.models.components import SDModel
    from adapters_core.models.ldm_layout import KeyMap
    from adapters_core.targets import Target

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
SDXL_COMPONENTS = (
    Component("text_encoder", "lora_te1", "text_encoder"),
    Component("text_encoder_2", "lora_te2", "text_encoder"),
    Component("unet", "lora_unet", "unet"),
)
# Diffusers pipelines whose folders hold an SDXL base model (model_index.json _class_name).
SDXL_PIPELINES = frozenset({
    "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
})
HIDDEN_STATE = "hidden_state"  # both encoders' penultimate states, side by side
POOLED = "pooled"  # the second encoder's projected pooled embedding


class SDXLFamily(ModelFamily):
    """SDXL base-shaped models, built from a bundled config set (``configs/<config_set>/``)."""

    components = SDXL_COMPONENTS
    blocks = SDXL_BLOCKS
    kohya_v2 = False
    base_model_versions = ("sdxl_base_v1-0",)
    vae_needs_float32 = True  # SDXL 1.0's VAE overflows float16

    def __init__(
        self,
        name: str,
        description: str,
        config_set: str,
        *,
        model_names: Mapping[str, bool],
        bundled_tokenizer: Path | None = None,
        cached_repo: str = "stabilityai/stable-diffusion-xl-base-1.0",
    ) -> None:
        self.name = name
        self.description = description
        self.config_set = config_set
        self.model_names = dict(model_names)
        self.bundled_tokenizer = bundled_tokenizer
        self.cached_repo = cached_repo

    def config(self, component: str) -> dict[str, Any]:
        """One bundled component config (a fresh copy)."""
        return read_config(CONFIGS_DIR / self.config_set, component)

    @functools.cached_property
    def _unet_key_map(self) -> KeyMap:
        from adapters_core.models.ldm_layout import UNetLayout

        return UNetLayout.from_config(self.config("unet")).key_map()

    # -- names -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool) -> str:
        return "sdxl_base_v1-0"

    def architecture(self, v_prediction: bool) -> str:
        return "stable-diffusion-xl-v1-base"

    def default_resolution(self, v_prediction: bool) -> int:
        return 1024

    def foreign_module_hint(self, module_name: str) -> str | None:
        if module_name.startswith("lora_te_"):
            return "SD 1.x/2.x text-encoder module (lora_te_); SDXL has two text encoders (lora_te1_, lora_te2_)"
        return None

    def module_path_for_name(self, component: Component, path: str) -> str:
        if component.role != "unet":
            return super().module_path_for_name(component, path)
        ldm = self._unet_key_map.to_ldm(f"{path}.weight")
        return ldm.removesuffix(".weight") if ldm is not None else path

    def layer_table(self) -> LayerTable:
        """Shipped in ``tables/`` (``scripts/write_layer_tables.py``), so tools reading files start fast."""
        from adapters_core.layer_table import shipped_or_built

        return shipped_or_built(self, Path(__file__).with_name("tables"))

    def module_aliases(self, components: Mapping[str, nn.Module | None], targets: Iterable[Target]) -> dict[str, str]:
        """U-Net modules named after their diffusers paths (``lora_unet_down_blocks_1_...``)."""
        from adapters_core.targets import kohya_name

        prefixes = {part.name: part.kohya_prefix for part in self.components if part.role == "unet"}
        return {
            kohya_name(prefixes[t.component], t.module_path): t.name
            for t in targets
            if t.component in prefixes and t.module_path
        }

    # -- detection -------------------------------------------------------------------------------
    def _is_own_unet(self, unet_config: Mapping[str, Any]) -> bool:
        own = self.config("unet")
        return (
            unet_config.get("addition_embed_type") == "text_time"
            and list(unet_config.get("block_out_channels") or []) == own["block_out_channels"]
        )

    def detect_checkpoint(self, shapes: Mapping[str, torch.Tensor], path: Path) -> bool:
        from adapt_sdxl.layout import CONV_IN, is_sgm_checkpoint

        if not is_sgm_checkpoint(shapes, path):
            return False
        return CONV_IN in shapes and shapes[CONV_IN].shape[0] == self.config("unet")["block_out_channels"][0]

    def detect_diffusers(self, folder: Path, model_index: Mapping[str, Any]) -> bool:
        from adapters_core.errors import ModelLoadError
        from adapters_core.textfiles import read_json

        if model_index.get("_class_name") not in SDXL_PIPELINES:
            return False
        config_file = folder / "unet" / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{folder}: no unet/config.json; expected an SDXL Diffusers folder")
        config = read_json(config_file, str(config_file), ModelLoadError)
        return isinstance(config, dict) and self._is_own_unet(config)

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
        from adapt_sdxl.loading import load_diffusers, load_single_file

        if path.is_dir():
            return load_diffusers(self, path, v_prediction, dtype, tokenizer_path, need_tokenizer)
        return load_single_file(self, path, bool(v_prediction), dtype, tokenizer_path, need_tokenizer)

    def build_components(
        self, *, device: str = "meta", folder: Path | None = None, v_prediction: bool = False
    ) -> dict[str, nn.Module]:
        from adapt_sdxl.loading import build_components

        return build_components(self, device, folder)

    def checkpoint_state_dict(self, model: SDModel) -> dict[str, torch.Tensor]:
        from adapt_sdxl.loading import sgm_state_dict

        return sgm_state_dict(model)

    def checkpoint_module_keys(self, shapes: Mapping[str, torch.Tensor], v_prediction: bool) -> dict[str, list[str]]:
        from adapt_sdxl.checkpoint_names import sgm_module_names

        return sgm_module_names(self, shapes)

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
        from adapt_sdxl.conditioning import encode_prompts

        return encode_prompts(components, tokenizers, prompts, max_token_length)

    def check_clip_skip(self, components: Mapping[str, nn.Module], clip_skip: int | None) -> None:
        if clip_skip is not None:
            raise ConfigError(
                f"--clip_skip {clip_skip}: SDXL conditions on the penultimate layer of both text encoders; "
                "leave --clip_skip out"
            )

    def unet_conditioning(self, outputs: TextOutputs, batch: Mapping[str, Any]) -> dict[str, Any]:
        from adapt_sdxl.conditioning import unet_conditioning

        return unet_conditioning(outputs, batch)

    def pipeline_conditioning(self, positive: TextOutputs, negative: TextOutputs) -> dict[str, Any]:
        return {
            "prompt_embeds": positive[HIDDEN_STATE],
            "negative_prompt_embeds": negative[HIDDEN_STATE],
            "pooled_prompt_embeds": positive[POOLED],
            "negative_pooled_prompt_embeds": negative[POOLED],
        }

    def build_pipeline(self, model: SDModel, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        parts: Any = model.components  # CLIPTextModel and CLIPTextModelWithProjection, as loaded
        tokenizers: Any = model.tokenizers
        return StableDiffusionXLPipeline(
            vae=model.vae,
            text_encoder=parts["text_encoder"],
            text_encoder_2=parts["text_encoder_2"],
            tokenizer=tokenizers.get("text_encoder"),
            tokenizer_2=tokenizers.get("text_encoder_2"),
            unet=model.unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )

    def owns_pipeline(self, pipe: Any) -> bool:
        unet = getattr(pipe, "unet", None)
        if getattr(pipe, "text_encoder_2", None) is None or unet is None:
            return False
        return self._is_own_unet(unet.config)
