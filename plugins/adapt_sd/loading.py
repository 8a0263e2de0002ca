"""Loading an SD 1.x/2.x model (Diffusers folder or LDM single file) and building its
components without weights (the LDM key of each adaptable layer: :mod:`adapt_sd.checkpoint_names`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from adapt_sd.detection import CONV_IN
from adapters_core.errors import ModelLoadError
from adapters_core.models.bundled import TINY_TOKENIZER_DIR, load_config
from adapters_core.models.components import SDModel
from adapters_core.models.ldm_layout import (
    UNET_PREFIX,
    VAE_PREFIX,
    text_encoder_from_ldm,
    unet_from_ldm,
    vae_from_ldm,
)
from adapters_core.models.loader import (
    assign_weights,
    find_clip_tokenizer,
    forget_prefix,
    from_pretrained,
    has_tokenizer_files,
    scheduler_config_of,
)
from adapters_core.models.single_file import read_checkpoint

if TYPE_CHECKING:
    from adapt_sd.family import StableDiffusionFamily


def _model(
    family: StableDiffusionFamily,
    unet: nn.Module,
    text_encoder: nn.Module,
    vae: AutoencoderKL,
    tokenizer: object,
    scheduler_config: dict[str, object],
    v_prediction: bool,
    source: Path,
) -> SDModel:
    return SDModel(
        family=family,
        components={"text_encoder": text_encoder, "unet": unet},
        vae=vae,
        tokenizers={"text_encoder": tokenizer},
        noise_scheduler_config=scheduler_config,
        v_parameterization=v_prediction,
        source=source,
    )


def load_diffusers(
    family: StableDiffusionFamily,
    path: Path,
    v_prediction: bool | None,
    dtype: torch.dtype,
    tokenizer_path: Path | None,
    need_tokenizer: bool,
) -> SDModel:
    unet = from_pretrained(UNet2DConditionModel.from_pretrained, path, "unet", torch_dtype=dtype)
    vae = from_pretrained(AutoencoderKL.from_pretrained, path, "vae", torch_dtype=dtype)
    text_encoder = from_pretrained(CLIPTextModel.from_pretrained, path, "text_encoder", dtype=dtype)
    bundled = load_config(family.variants[bool(v_prediction)].config, "scheduler")
    scheduler_config, v_prediction = scheduler_config_of(path, bundled, v_prediction)
    own = path / "tokenizer"
    tokenizer_source = own if has_tokenizer_files(own) and tokenizer_path is None else tokenizer_path
    tokenizer = find_clip_tokenizer(
        path, family.cached_tokenizer, tokenizer_source, text_encoder, need_tokenizer, family.description
    )
    return _model(family, unet, text_encoder, vae, tokenizer, scheduler_config, v_prediction, path)


def load_single_file(
    family: StableDiffusionFamily,
    path: Path,
    v_prediction: bool,
    dtype: torch.dtype,
    tokenizer_path: Path | None,
    need_tokenizer: bool,
) -> SDModel:
    checkpoint, _ = read_checkpoint(path)
    name = family.variants[v_prediction].config

    # The checkpoint lets go of each component before assign_weights copies it tensor by
    # tensor, releasing each original once its copy exists: the weights are never held twice.
    unet_config = load_config(name, "unet")
    unet_config["in_channels"] = checkpoint[CONV_IN].shape[1]  # 9 for inpainting models
    unet_state = unet_from_ldm(checkpoint, unet_config)
    forget_prefix(checkpoint, UNET_PREFIX)
    unet = assign_weights(path, "U-Net", lambda: UNet2DConditionModel.from_config(unet_config), unet_state, dtype)
    vae_config = load_config(name, "vae")
    vae_state = vae_from_ldm(checkpoint, vae_config)
    forget_prefix(checkpoint, VAE_PREFIX)
    vae = assign_weights(path, "VAE", lambda: AutoencoderKL.from_config(vae_config), vae_state, dtype)
    te_config = CLIPTextConfig(**load_config(name, "text_encoder"))
    te_state = text_encoder_from_ldm(checkpoint, v2=family.kind.openclip, num_layers=te_config.num_hidden_layers)
    del checkpoint
    text_encoder = assign_weights(path, "text encoder", lambda: CLIPTextModel(te_config), te_state, dtype)

    scheduler_config = load_config(name, "scheduler")
    scheduler_config["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
    tokenizer_source = tokenizer_path
    if family.bundled_tokenizer and tokenizer_path is None:
        tokenizer_source = TINY_TOKENIZER_DIR
    tokenizer = find_clip_tokenizer(
        path, family.cached_tokenizer, tokenizer_source, text_encoder, need_tokenizer, family.description
    )
    return _model(family, unet, text_encoder, vae, tokenizer, scheduler_config, v_prediction, path)


def build_components(
    family: StableDiffusionFamily, device: str, folder: Path | None, v_prediction: bool
) -> dict[str, nn.Module]:
    """U-Net and text encoder from the bundled configs or a Diffusers folder's, without weights
    on ``meta`` (any other ``device`` gets random weights)."""
    if folder is not None:
        try:
            unet_config = dict(UNet2DConditionModel.load_config(folder / "unet"))
            te_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{folder}: cannot read its unet/text_encoder configs ({error})") from None
    else:
        name = family.variants[v_prediction].config
        unet_config = load_config(name, "unet")
        te_config = CLIPTextConfig(**load_config(name, "text_encoder"))
    with torch.device(device):
        return {"text_encoder": CLIPTextModel(te_config), "unet": UNet2DConditionModel.from_config(unet_config)}
