"""Load SD 1.x/2.x from a Diffusers folder or an LDM-layout single file, offline."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adapters_core.errors import ModelLoadError
from adapters_core.models.bundled import TINY_TOKENIZER_DIR, ConfigName, config_name_for, load_config
from adapters_core.models.components import SDModel
from adapters_core.models.ldm_layout import (
    TE_V1_PREFIX,
    TE_V2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    text_encoder_from_ldm,
    unet_from_ldm,
    vae_from_ldm,
)
from adapters_core.models.single_file import PathLike, read_checkpoint

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_CONTEXT = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_SD_CHANNELS = 320
_TINY_CHANNELS = 32
# Where the local HF cache keeps the tokenizers SD 1.x and SD 2.x were trained with.
_CACHED_TOKENIZERS = {
    False: ("openai/clip-vit-large-patch14", ""),
    True: ("stabilityai/stable-diffusion-2", "tokenizer/"),
}


def load_sd_model(
    path: PathLike,
    *,
    v2: bool | None = None,
    v_parameterization: bool | None = None,
    dtype: torch.dtype = torch.float32,
    tokenizer_path: PathLike | None = None,
    device: str | torch.device = "cpu",
    need_tokenizer: bool = True,
) -> SDModel:
    """Load a model; nothing is downloaded.

    ``v2`` is detected (U-Net context dim, text-encoder layout) and, if given, checked.
    ``v_parameterization`` defaults to the Diffusers folder's scheduler ``prediction_type``;
    a single file cannot tell, so there it defaults to False (kohya: the user says).
    The tokenizer comes from the Diffusers folder, else ``tokenizer_path`` (a CLIP tokenizer
    folder or a Diffusers model folder), else the local HF cache; the tiny model's is bundled.
    ``need_tokenizer=False`` (merge/extract tools) gives ``tokenizer=None`` instead of an error
    when none is found.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(
            f"{path}: no such file or folder; "
            "expected a Diffusers model folder or a .safetensors/.ckpt checkpoint"
        )
    if path.is_dir():
        model = _load_diffusers(path, v2, v_parameterization, dtype, tokenizer_path, need_tokenizer)
    else:
        model = _load_single_file(path, v2, v_parameterization, dtype, tokenizer_path, need_tokenizer)
    for module in (model.unet, model.text_encoder, model.vae):
        module.to(device)
    return model


def _load_diffusers(
    path: Path,
    v2: bool | None,
    v_parameterization: bool | None,
    dtype: torch.dtype,
    tokenizer_path: PathLike | None,
    need_tokenizer: bool,
) -> SDModel:
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path}: folder has no model_index.json; expected a Diffusers model folder")
    unet = _from_pretrained(UNet2DConditionModel.from_pretrained, path, "unet", torch_dtype=dtype)
    vae = _from_pretrained(AutoencoderKL.from_pretrained, path, "vae", torch_dtype=dtype)
    text_encoder = _from_pretrained(CLIPTextModel.from_pretrained, path, "text_encoder", dtype=dtype)
    is_v2 = unet.config.cross_attention_dim == 1024
    _check_v2(path, v2, is_v2, f"its U-Net has cross_attention_dim {unet.config.cross_attention_dim}")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        scheduler_config: dict[str, Any] = json.loads(scheduler_file.read_text())
    else:
        scheduler_config = load_config(config_name_for(is_v2, bool(v_parameterization)), "scheduler")
    if v_parameterization is None:
        v_parameterization = scheduler_config.get("prediction_type") == "v_prediction"
    scheduler_config["prediction_type"] = "v_prediction" if v_parameterization else "epsilon"
    own = path / "tokenizer"
    tokenizer_source = own if _has_tokenizer_files(own) and tokenizer_path is None else tokenizer_path
    tokenizer = _find_tokenizer(path, is_v2, tokenizer_source, text_encoder, need_tokenizer)
    return SDModel(unet, text_encoder, vae, tokenizer, scheduler_config, is_v2, v_parameterization, path)


def _from_pretrained(load: Callable[..., ModuleT], path: Path, subfolder: str, **kwargs: Any) -> ModuleT:
    if not (path / subfolder).is_dir():
        raise ModelLoadError(f"{path}: no {subfolder}/ folder; expected a Stable Diffusion Diffusers folder")
    try:
        return load(path, subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"{path / subfolder}: cannot load ({message})") from error


def _check_v2(path: Path, wanted: bool | None, found: bool, evidence: str) -> None:
    if wanted is not None and wanted != found:
        kind = "SD 2.x" if found else "SD 1.x"
        raise ModelLoadError(f"{path}: v2={wanted} was given but this is an {kind} model ({evidence})")


def detect_architecture(checkpoint: Mapping[str, torch.Tensor], path: Path) -> ConfigName:
    """Which bundled config set fits an LDM checkpoint: ``sd_v1``, ``sd_v2`` or ``tiny``.

    SD2 is recognised by its OpenCLIP text encoder (``cond_stage_model.model.``), checked
    against the U-Net's cross-attention context size (1024 for SD2, 768 for SD1).
    """
    if _CONV_IN not in checkpoint:
        hint = " (SDXL is not supported)" if any(k.startswith("conditioner.") for k in checkpoint) else ""
        raise ModelLoadError(
            f"{path}: no {_CONV_IN} key; expected an SD 1.x/2.x checkpoint in the original (LDM) layout{hint}"
        )
    channels = checkpoint[_CONV_IN].shape[0]
    if channels not in (_SD_CHANNELS, _TINY_CHANNELS):
        raise ModelLoadError(
            f"{path}: {_CONV_IN} has {channels} output channels; expected {_SD_CHANNELS} (SD 1.x/2.x)"
        )
    if any(k.startswith(TE_V2_PREFIX) for k in checkpoint):
        is_v2 = True
    elif any(k.startswith(TE_V1_PREFIX) for k in checkpoint):
        is_v2 = False
    else:
        raise ModelLoadError(f"{path}: no text encoder ({TE_V1_PREFIX}* or {TE_V2_PREFIX}* keys)")
    if channels == _TINY_CHANNELS:
        if is_v2:
            raise ModelLoadError(
                f"{path}: a tiny U-Net with an OpenCLIP text encoder; expected the tiny SD1-style model"
            )
        return "tiny"
    if _CONTEXT in checkpoint:
        context = checkpoint[_CONTEXT].shape[1]
        if context != (1024 if is_v2 else 768):
            raise ModelLoadError(
                f"{path}: {_CONTEXT} has context size {context}, which does not fit its "
                f"{'OpenCLIP (SD 2.x)' if is_v2 else 'CLIP (SD 1.x)'} text encoder"
            )
    return "sd_v2" if is_v2 else "sd_v1"


def _load_single_file(
    path: Path,
    v2: bool | None,
    v_parameterization: bool | None,
    dtype: torch.dtype,
    tokenizer_path: PathLike | None,
    need_tokenizer: bool,
) -> SDModel:
    checkpoint, _ = read_checkpoint(path)
    architecture = detect_architecture(checkpoint, path)
    is_v2 = architecture == "sd_v2"
    _check_v2(path, v2, is_v2, "its text encoder is " + ("OpenCLIP" if is_v2 else "CLIP"))
    v_parameterization = bool(v_parameterization)
    name: ConfigName = "tiny" if architecture == "tiny" else config_name_for(is_v2, v_parameterization)

    # The checkpoint lets go of each component before _assign copies it tensor by tensor,
    # releasing each original once its copy exists: the weights are never held twice.
    unet_config = load_config(name, "unet")
    unet_config["in_channels"] = checkpoint[_CONV_IN].shape[1]  # 9 for inpainting models
    unet_state = unet_from_ldm(checkpoint, unet_config)
    _forget(checkpoint, UNET_PREFIX)
    unet = _assign(path, "U-Net", lambda: UNet2DConditionModel.from_config(unet_config), unet_state, dtype)
    vae_config = load_config(name, "vae")
    vae_state = vae_from_ldm(checkpoint, vae_config)
    _forget(checkpoint, VAE_PREFIX)
    vae = _assign(path, "VAE", lambda: AutoencoderKL.from_config(vae_config), vae_state, dtype)
    te_config = CLIPTextConfig(**load_config(name, "text_encoder"))
    te_state = text_encoder_from_ldm(checkpoint, v2=is_v2, num_layers=te_config.num_hidden_layers)
    del checkpoint
    text_encoder = _assign(path, "text encoder", lambda: CLIPTextModel(te_config), te_state, dtype)

    scheduler_config = load_config(name, "scheduler")
    scheduler_config["prediction_type"] = "v_prediction" if v_parameterization else "epsilon"
    tokenizer_source = tokenizer_path
    if architecture == "tiny" and tokenizer_path is None:
        tokenizer_source = TINY_TOKENIZER_DIR
    tokenizer = _find_tokenizer(path, is_v2, tokenizer_source, text_encoder, need_tokenizer)
    return SDModel(unet, text_encoder, vae, tokenizer, scheduler_config, is_v2, v_parameterization, path)


def _forget(checkpoint: dict[str, torch.Tensor], prefix: str) -> None:
    """Drop a component's tensors from the checkpoint once they have been converted."""
    for key in [k for k in checkpoint if k.startswith(prefix)]:
        del checkpoint[key]


def _assign(
    path: Path, what: str, build: Callable[[], ModuleT], state: dict[str, torch.Tensor], dtype: torch.dtype
) -> ModuleT:
    """Build a module without allocating its weights, then adopt ``state``'s tensors, cast to
    ``dtype`` (``state`` is emptied; the key check guarantees every parameter is replaced)."""
    with init_empty_weights():  # parameters on "meta"; buffers (CLIP position_ids) stay real
        module = build()
    # Copies, even without a cast: tensors read from a safetensors file are views at unaligned
    # offsets, on which CPU kernels round differently from a Diffusers-loaded model.
    owned: dict[str, torch.Tensor] = {}
    for key in list(state):
        tensor = state.pop(key)
        owned[key] = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
    try:
        result = module.load_state_dict(owned, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatch
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"{path}: {what} weights do not fit the SD config ({message})") from error
    problems = [f"missing {k}" for k in result.missing_keys]
    problems += [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ModelLoadError(f"{path}: {what} keys do not fit the SD config: {', '.join(problems[:5])}")
    return module.eval()  # as from_pretrained leaves it


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _find_tokenizer(
    model_path: Path,
    v2: bool,
    tokenizer_path: PathLike | None,
    text_encoder: CLIPTextModel,
    need_tokenizer: bool,
) -> CLIPTokenizer | None:
    """The tokenizer from ``tokenizer_path`` or the HF cache (files checked first: transformers 5
    silently builds an empty tokenizer from a folder without them)."""
    if tokenizer_path is not None:
        folder = Path(tokenizer_path)
        if _has_tokenizer_files(folder / "tokenizer"):
            folder = folder / "tokenizer"
        if not _has_tokenizer_files(folder):
            raise ModelLoadError(
                f"{tokenizer_path}: no CLIP tokenizer there; expected vocab.json and merges.txt "
                "(or a Diffusers model folder with tokenizer/)"
            )
    else:
        repo, subfolder = _CACHED_TOKENIZERS[v2]
        cached = try_to_load_from_cache(repo, subfolder + "vocab.json")
        folder = Path(cached).parent if isinstance(cached, str) else Path()
        if not isinstance(cached, str) or not _has_tokenizer_files(folder):
            if not need_tokenizer:
                return None
            raise ModelLoadError(
                f"{model_path}: no tokenizer found locally ({repo} is not in the HF cache); pass "
                f"tokenizer_path (--tokenizer) = a Diffusers SD {'2.x' if v2 else '1.x'} model folder "
                "or a folder with the CLIP tokenizer files vocab.json and merges.txt"
            )
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    max_length = text_encoder.config.max_position_embeddings
    if tokenizer.model_max_length > max_length:  # unset in some tokenizer configs: pads to 1e30
        tokenizer.model_max_length = max_length
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens but the text encoder only "
            f"{text_encoder.config.vocab_size}; pass the tokenizer that belongs to this model"
        )
    return tokenizer
