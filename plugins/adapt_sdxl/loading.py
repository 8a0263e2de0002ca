"""Loading an SDXL model (Diffusers folder or SGM single file), building its components
without weights, and the single-file key of every adaptable layer (for the streaming merge)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from adapt_sdxl.layout import (
    CONV_IN,
    TE1_PREFIX,
    text_encoder_1_from_sgm,
    text_encoder_1_to_sgm,
    text_encoder_2_from_sgm,
    text_encoder_2_to_sgm,
)
from adapters_core.errors import ModelLoadError
from adapters_core.models.components import SDModel
from adapters_core.models.ldm_layout import (
    UNET_PREFIX,
    VAE_PREFIX,
    UNetLayout,
    unet_from_ldm,
    unet_to_ldm,
    vae_from_ldm,
    vae_to_ldm,
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
    from adapt_sdxl.family import SDXLFamily

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


def _tokenizers(
    family: SDXLFamily,
    path: Path,
    folder: Path | None,
    tokenizer_path: Path | None,
    encoders: Mapping[str, nn.Module],
    need_tokenizer: bool,
) -> dict[str, Any]:
    """Each text encoder's tokenizer: the Diffusers folder's own, else ``tokenizer_path``
    (``tokenizer_2/`` of a Diffusers folder for the second), else the bundled or cached one."""
    found: dict[str, Any] = {}
    for name, subfolder in TOKENIZER_FOLDERS.items():
        own = folder / subfolder if folder is not None else None
        source: Path | None = tokenizer_path
        if own is not None and has_tokenizer_files(own) and tokenizer_path is None:
            source = own
        elif tokenizer_path is not None and has_tokenizer_files(tokenizer_path / subfolder):
            source = tokenizer_path / subfolder
        elif source is None and family.bundled_tokenizer is not None:
            source = family.bundled_tokenizer
        found[name] = find_clip_tokenizer(
            path, (family.cached_repo, f"{subfolder}/"), source, encoders[name], need_tokenizer, family.description
        )
    return found


def load_diffusers(
    family: SDXLFamily,
    path: Path,
    v_prediction: bool | None,
    dtype: torch.dtype,
    tokenizer_path: Path | None,
    need_tokenizer: bool,
) -> SDModel:
    components: dict[str, nn.Module] = {
        "text_encoder": from_pretrained(CLIPTextModel.from_pretrained, path, "text_encoder", dtype=dtype),
        "text_encoder_2": from_pretrained(
            CLIPTextModelWithProjection.from_pretrained, path, "text_encoder_2", dtype=dtype
        ),
        "unet": from_pretrained(UNet2DConditionModel.from_pretrained, path, "unet", torch_dtype=dtype),
    }
    vae = from_pretrained(AutoencoderKL.from_pretrained, path, "vae", torch_dtype=dtype)
    scheduler_config, v_prediction = scheduler_config_of(path, family.config("scheduler"), v_prediction)
    tokenizers = _tokenizers(family, path, path, tokenizer_path, components, need_tokenizer)
    return SDModel(family, components, vae, tokenizers, scheduler_config, v_prediction, path)


def load_single_file(
    family: SDXLFamily,
    path: Path,
    v_prediction: bool,
    dtype: torch.dtype,
    tokenizer_path: Path | None,
    need_tokenizer: bool,
) -> SDModel:
    checkpoint, _ = read_checkpoint(path)
    if CONV_IN not in checkpoint:
        raise ModelLoadError(f"{path}: no {CONV_IN} key; expected an SDXL checkpoint in the SGM layout")
    # Each part leaves the checkpoint once converted: the weights are never held twice.
    unet_config = family.config("unet")
    unet_config["in_channels"] = checkpoint[CONV_IN].shape[1]  # 9 for inpainting models
    unet_state = unet_from_ldm(checkpoint, unet_config)
    forget_prefix(checkpoint, UNET_PREFIX)
    unet = assign_weights(path, "U-Net", lambda: UNet2DConditionModel.from_config(unet_config), unet_state, dtype)
    vae_config = family.config("vae")
    vae_state = vae_from_ldm(checkpoint, vae_config)
    forget_prefix(checkpoint, VAE_PREFIX)
    vae = assign_weights(path, "VAE", lambda: AutoencoderKL.from_config(vae_config), vae_state, dtype)
    te1_config = CLIPTextConfig(**family.config("text_encoder"))
    te1_state = text_encoder_1_from_sgm(checkpoint)
    forget_prefix(checkpoint, TE1_PREFIX)
    te1 = assign_weights(path, "text encoder", lambda: CLIPTextModel(te1_config), te1_state, dtype)
    te2_config = CLIPTextConfig(**family.config("text_encoder_2"))
    try:
        te2_state = text_encoder_2_from_sgm(checkpoint, te2_config.num_hidden_layers)
    except ModelLoadError as error:
        raise ModelLoadError(f"{path}: {error}") from None
    del checkpoint
    te2 = assign_weights(
        path, "second text encoder", lambda: CLIPTextModelWithProjection(te2_config), te2_state, dtype
    )
    components: dict[str, nn.Module] = {"text_encoder": te1, "text_encoder_2": te2, "unet": unet}
    scheduler_config = family.config("scheduler")
    scheduler_config["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
    tokenizers = _tokenizers(family, path, None, tokenizer_path, components, need_tokenizer)
    return SDModel(family, components, vae, tokenizers, scheduler_config, v_prediction, path)


def build_components(family: SDXLFamily, device: str, folder: Path | None) -> dict[str, nn.Module]:
    """Both text encoders and the U-Net from the bundled configs or a Diffusers folder's,
    without weights on ``meta`` (any other ``device`` gets random weights)."""
    if folder is not None:
        try:
            unet_config = dict(UNet2DConditionModel.load_config(folder / "unet"))
            te_configs = [CLIPTextConfig.from_pretrained(folder / name) for name in TEXT_ENCODERS]
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{folder}: cannot read its unet/text_encoder/text_encoder_2 configs ({error})") from None
    else:
        unet_config = family.config("unet")
        te_configs = [CLIPTextConfig(**family.config(name)) for name in TEXT_ENCODERS]
    with torch.device(device):
        return {
            "text_encoder": CLIPTextModel(te_configs[0]),
            "text_encoder_2": CLIPTextModelWithProjection(te_configs[1]),
            "unet": UNet2DConditionModel.from_config(unet_config),
        }


def sgm_state_dict(model: SDModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the SGM single-file keys."""
    return {
        **unet_to_ldm(model.unet.state_dict(), UNetLayout.from_config(model.unet.config)),
        **text_encoder_1_to_sgm(model.components["text_encoder"].state_dict()),
        **text_encoder_2_to_sgm(model.components["text_encoder_2"].state_dict()),
        **vae_to_ldm(model.vae.state_dict()),
    }
