"""The tiny SDXL-shaped model (bundled ``configs/tiny_sdxl``) with deterministic random weights:
SDXL's structure (two text encoders, the size embedding, 3 U-Net levels) in a few MB, for
tests and demos."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTokenizer

from adapters_core.models.bundled import TINY_TOKENIZER_DIR
from adapters_core.models.components import SDModel
from adapters_core.plugins import get_registry


def build_tiny_sdxl_model(seed: int = 0) -> SDModel:
    """The tiny SDXL model with weights drawn from ``seed`` (the global RNG is untouched)."""
    from adapt_sdxl.family import CONFIGS_DIR, SDXLFamily

    family = get_registry().family("tiny_sdxl")
    assert isinstance(family, SDXLFamily)  # this package registers it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = family.build_components(device="cpu")
        vae = AutoencoderKL.from_config(family.config("vae"))
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    return SDModel(
        family=family,
        components={name: module.eval() for name, module in components.items()},
        vae=vae.eval(),
        tokenizers={"text_encoder": tokenizer, "text_encoder_2": tokenizer},
        noise_scheduler_config=family.config("scheduler"),
        v_parameterization=False,
        source=CONFIGS_DIR / "tiny_sdxl",
    )


def write_tiny_sdxl_model(
    folder: str | os.PathLike[str],
    seed: int = 0,
    *,
    single_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> SDModel:
    """Write the tiny SDXL model as a Diffusers folder and, if asked, as an SGM single file too."""
    from adapters_core.models.single_file import save_diffusers, save_single_file

    model = build_tiny_sdxl_model(seed)
    save_diffusers(model, folder, overwrite=overwrite)
    if single_file is not None:
        save_single_file(model, single_file, overwrite=overwrite)
    model.source = Path(folder)
    return model
