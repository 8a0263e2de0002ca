"""The tiny offline demo/test model, and real-size SD modules with random weights.

The tiny model (``reference/interop.md``: 1.1 M-parameter U-Net with two levels, a 2-layer
text encoder, a 194-token tokenizer) is small enough for unit tests and the quickstart, yet
has every layer kind an adapter touches (Linear, 1x1 and 3x3 convs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adapters_core.models.bundled import TINY_TOKENIZER_DIR, ConfigName, config_dir, load_config
from adapters_core.models.components import SDModel
from adapters_core.plugins import get_registry

Device = str | torch.device


def build_tiny_model(seed: int = 0) -> SDModel:
    """The tiny SD1-style model with deterministic random weights (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(load_config("tiny", "unet"))
        vae = AutoencoderKL.from_config(load_config("tiny", "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**load_config("tiny", "text_encoder")))
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    return SDModel(
        family=get_registry().family("tiny"),
        components={"text_encoder": text_encoder, "unet": unet},
        vae=vae,
        tokenizers={"text_encoder": tokenizer},
        noise_scheduler_config=load_config("tiny", "scheduler"),
        v_parameterization=False,
        source=config_dir("tiny"),
    )


def write_tiny_model(
    folder: str | os.PathLike[str],
    seed: int = 0,
    *,
    single_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> SDModel:
    """Write the tiny model as a Diffusers folder and, if asked, as an LDM single file too."""
    from adapters_core.models.single_file import save_diffusers, save_single_file  # imports the pipeline

    model = build_tiny_model(seed)
    save_diffusers(model, folder, overwrite=overwrite)
    if single_file is not None:
        save_single_file(model, single_file, overwrite=overwrite)
    model.source = Path(folder)
    return model


@contextmanager
def creating_modules(device: Device, dtype: torch.dtype) -> Iterator[None]:
    """Create modules directly on ``device`` in ``dtype`` (no float32 copy, no cast warnings)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _build_unet(name: ConfigName, device: Device, dtype: torch.dtype) -> UNet2DConditionModel:
    with creating_modules(device, dtype):
        return UNet2DConditionModel.from_config(load_config(name, "unet"))


def _build_text_encoder(name: ConfigName, device: Device, dtype: torch.dtype) -> CLIPTextModel:
    with creating_modules(device, dtype):
        return CLIPTextModel(CLIPTextConfig(**load_config(name, "text_encoder")))


def build_sd15_unet(device: Device = "meta", dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """The SD 1.x U-Net (859.5 M parameters) with random weights; on "meta" nothing is allocated."""
    return _build_unet("sd_v1", device, dtype)


def build_sd15_text_encoder(device: Device = "meta", dtype: torch.dtype = torch.float32) -> CLIPTextModel:
    """The SD 1.x text encoder (CLIP ViT-L/14, 12 layers) with random weights."""
    return _build_text_encoder("sd_v1", device, dtype)


def build_sd2_unet(
    device: Device = "meta", dtype: torch.dtype = torch.float32, *, v_parameterization: bool = False
) -> UNet2DConditionModel:
    """The SD 2.x U-Net (865.9 M parameters; 768-v config if ``v_parameterization``)."""
    return _build_unet("sd_v2_v" if v_parameterization else "sd_v2", device, dtype)


def build_sd2_text_encoder(device: Device = "meta", dtype: torch.dtype = torch.float32) -> CLIPTextModel:
    """The SD 2.x text encoder (OpenCLIP ViT-H as HF CLIP, 23 of its 24 layers)."""
    return _build_text_encoder("sd_v2", device, dtype)
