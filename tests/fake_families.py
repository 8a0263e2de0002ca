"""A third-party model family for the tests: the tiny model with a second text encoder.

It is what a plugin author would write, registered through a faked ``adapt.models`` entry
point, with no edit to the core: two CLIP text encoders (kohya prefixes ``lora_te1`` and
``lora_te2``) whose hidden states are concatenated into the U-Net's 64-wide cross-attention
context. It reuses the SD family's machinery (as C3Lier reuses LierLa's), and adds what
differs: its components, loading a Diffusers folder with ``text_encoder_2``/``tokenizer_2``,
prompt encoding, the pipeline. Single files are not part of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adapt_sd.family import HIDDEN_STATE, SDKind, StableDiffusionFamily, Variant
from adapters_core.errors import ModelLoadError
from adapters_core.family import Component, ModelFamily, TextOutputs
from adapters_core.models import clip_text
from adapters_core.models.bundled import TINY_TOKENIZER_DIR, config_dir, load_config
from adapters_core.models.components import SDModel
from adapters_core.models.loader import from_pretrained, scheduler_config_of
from adapters_core.plugins import hookimpl
from adapters_core.targets import Target

TE_WIDTH = 32  # each tiny text encoder's hidden size; the U-Net reads both side by side


def unet_config() -> dict[str, Any]:
    return {**load_config("tiny", "unet"), "cross_attention_dim": 2 * TE_WIDTH}


class TinyDualPipeline(StableDiffusionPipeline):
    """SD's pipeline with a second text encoder and tokenizer among its saved components; it is
    always called with prompt embeddings the family encoded."""

    def __init__(
        self, vae: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any, tokenizer_2: Any, unet: Any,
        scheduler: Any, safety_checker: Any = None, feature_extractor: Any = None, image_encoder: Any = None,
        requires_safety_checker: bool = False,
    ) -> None:
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_modules(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


class TinyDualFamily(StableDiffusionFamily):
    components = (
        Component("text_encoder", "lora_te1", "text_encoder"),
        Component("text_encoder_2", "lora_te2", "text_encoder"),
        Component("unet", "lora_unet", "unet"),
    )

    def __init__(self) -> None:
        variant = Variant("tiny", "tinydual", "tiny-dual", 64)
        super().__init__(
            "tinydual",
            "tiny model with two text encoders (test plugin)",
            SDKind("tinydual", openclip=False),
            variant,
            variant,
            model_names={"tinydual": False},
            cached_tokenizer=("none/none", ""),
            bundled_tokenizer=True,
        )

    def foreign_module_hint(self, module_name: str) -> str | None:
        if module_name.startswith("lora_te_"):
            return "one-encoder module (lora_te_); this model has two text encoders (lora_te1_, lora_te2_)"
        return None

    def module_aliases(self, components: Mapping[str, nn.Module | None], targets: Iterable[Target]) -> dict[str, str]:
        return {}

    def detect_checkpoint(self, shapes: Mapping[str, torch.Tensor], path: Path) -> bool:
        return False

    def detect_diffusers(self, folder: Path, model_index: Mapping[str, Any]) -> bool:
        return model_index.get("text_encoder_2") is not None and (folder / "text_encoder_2").is_dir()

    def load(
        self,
        path: Path,
        *,
        v_prediction: bool | None,
        dtype: torch.dtype,
        tokenizer_path: Path | None,
        need_tokenizer: bool,
    ) -> SDModel:
        if not path.is_dir():
            raise ModelLoadError(f"{path}: the tinydual family reads Diffusers folders only")
        components: dict[str, nn.Module] = {
            name: from_pretrained(CLIPTextModel.from_pretrained, path, name, dtype=dtype)
            for name in ("text_encoder", "text_encoder_2")
        }
        components["unet"] = from_pretrained(UNet2DConditionModel.from_pretrained, path, "unet", torch_dtype=dtype)
        vae = from_pretrained(AutoencoderKL.from_pretrained, path, "vae", torch_dtype=dtype)
        scheduler_config, v_prediction = scheduler_config_of(path, load_config("tiny", "scheduler"), v_prediction)
        tokenizers = {
            "text_encoder": CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True),
            "text_encoder_2": CLIPTokenizer.from_pretrained(path / "tokenizer_2", local_files_only=True),
        }
        return SDModel(self, components, vae, tokenizers, scheduler_config, v_prediction, path)

    def build_components(
        self, *, device: str = "meta", folder: Path | None = None, v_prediction: bool = False
    ) -> dict[str, nn.Module]:
        te_config = CLIPTextConfig(**load_config("tiny", "text_encoder"))
        config = unet_config()
        if folder is not None:
            config = dict(UNet2DConditionModel.load_config(folder / "unet"))
        with torch.device(device):
            return {
                "text_encoder": CLIPTextModel(te_config),
                "text_encoder_2": CLIPTextModel(te_config),
                "unet": UNet2DConditionModel.from_config(config),
            }

    def checkpoint_state_dict(self, model: SDModel) -> dict[str, torch.Tensor]:
        raise ModelLoadError("the tinydual family has no single-file layout; save a Diffusers folder")

    def encode_text(
        self,
        components: Mapping[str, nn.Module],
        tokenizers: Mapping[str, Any],
        prompts: list[str],
        *,
        max_token_length: int | None,
        clip_skip: int | None,
    ) -> TextOutputs:
        states = [
            clip_text.encode(components[name], clip_text.tokenize(tokenizers[name], prompts, max_token_length), clip_skip)
            for name in ("text_encoder", "text_encoder_2")
        ]
        return {HIDDEN_STATE: torch.cat(states, dim=-1)}

    def check_clip_skip(self, components: Mapping[str, nn.Module], clip_skip: int | None) -> None:
        for name in ("text_encoder", "text_encoder_2"):
            clip_text.check_clip_skip(components[name], clip_skip)

    def build_pipeline(self, model: SDModel, scheduler: Any) -> Any:
        return TinyDualPipeline(
            vae=model.vae,
            text_encoder=model.components["text_encoder"],
            text_encoder_2=model.components["text_encoder_2"],
            tokenizer=model.tokenizers.get("text_encoder"),
            tokenizer_2=model.tokenizers.get("text_encoder_2"),
            unet=model.unet,
            scheduler=scheduler,
        )

    def owns_pipeline(self, pipe: Any) -> bool:
        return getattr(pipe, "text_encoder_2", None) is not None and pipe.unet.config.cross_attention_dim == 2 * TE_WIDTH


def build_tiny_dual_model(seed: int = 0) -> SDModel:
    """The tinydual model with deterministic random weights."""
    family = TinyDualFamily()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = family.build_components(device="cpu")
        vae = AutoencoderKL.from_config(load_config("tiny", "vae"))
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    scheduler_config, _ = scheduler_config_of(config_dir("tiny"), load_config("tiny", "scheduler"), False)
    tokenizers = {"text_encoder": tokenizer, "text_encoder_2": tokenizer}
    return SDModel(family, components, vae, tokenizers, scheduler_config, False, config_dir("tiny"))


class TinyDualPlugin:
    @hookimpl
    def register_model_families(self, register: Callable[[ModelFamily], None]) -> None:
        register(TinyDualFamily())


tinydual = TinyDualPlugin()


class SecondTinyPlugin:
    """A plugin that registers a family under a name an installed one already has."""

    @hookimpl
    def register_model_families(self, register: Callable[[ModelFamily], None]) -> None:
        family = TinyDualFamily()
        family.name = "tiny"
        register(family)


second_tiny = SecondTinyPlugin()
