"""Base models of any installed family: load (Diffusers folder or single file), save, convert.

Everything here works offline; ``HF_HUB_OFFLINE`` defaults to 1 on import (huggingface_hub
otherwise sends requests even for ``local_files_only`` loads), unless the caller set it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # adapt shows its own progress, not the libraries'

from typing import TYPE_CHECKING

from adapters_core.lazy_exports import lazy_exports

# What the package offers, by the module that defines it. The modules are imported when a name
# is first used, so that importing a light submodule (the checkpoint key tables in ldm_layout)
# does not import diffusers and transformers.
_EXPORTS = {
    "SDModel": "components",
    "load_sd_model": "loader",
    "to_pipeline": "pipeline",
    "read_checkpoint": "single_file",
    "save_diffusers": "single_file",
    "save_single_file": "single_file",
    "build_sd2_text_encoder": "tiny",
    "build_sd2_unet": "tiny",
    "build_sd15_text_encoder": "tiny",
    "build_sd15_unet": "tiny",
    "build_tiny_model": "tiny",
    "write_tiny_model": "tiny",
}

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from adapters_core.models.components import SDModel  # noqa: F401
    from adapters_core.models.loader import load_sd_model  # noqa: F401
    from adapters_core.models.pipeline import to_pipeline  # noqa: F401
    from adapters_core.models.single_file import read_checkpoint, save_diffusers, save_single_file  # noqa: F401
    from adapters_core.models.tiny import (  # noqa: F401
        build_sd2_text_encoder,
        build_sd2_unet,
        build_sd15_text_encoder,
        build_sd15_unet,
        build_tiny_model,
        write_tiny_model,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
