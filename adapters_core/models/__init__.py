"""Stable Diffusion 1.x/2.x models: load (Diffusers folder or LDM single file), save, convert.

Everything here works offline; ``HF_HUB_OFFLINE`` defaults to 1 on import (huggingface_hub
otherwise sends requests even for ``local_files_only`` loads), unless the caller set it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # adapt shows its own progress, not the libraries'

from adapters_core.models.components import SDModel  # noqa: E402
from adapters_core.quiet import apply_library_verbosity  # noqa: E402
from adapters_core.models.loader import load_sd_model  # noqa: E402
from adapters_core.models.pipeline import to_pipeline  # noqa: E402
from adapters_core.models.single_file import read_checkpoint, save_diffusers, save_single_file  # noqa: E402
from adapters_core.models.tiny import (  # noqa: E402
    build_sd2_text_encoder,
    build_sd2_unet,
    build_sd15_text_encoder,
    build_sd15_unet,
    build_tiny_model,
    write_tiny_model,
)

apply_library_verbosity()  # the libraries imported above log and draw bars only with --verbose

__all__ = [
    "SDModel",
    "build_sd15_text_encoder",
    "build_sd15_unet",
    "build_sd2_text_encoder",
    "build_sd2_unet",
    "build_tiny_model",
    "load_sd_model",
    "read_checkpoint",
    "save_diffusers",
    "save_single_file",
    "to_pipeline",
    "write_tiny_model",
]
