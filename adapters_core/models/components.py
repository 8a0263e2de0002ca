"""The loaded parts of a Stable Diffusion model, as the rest of adapt sees them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from adapters_core.quiet import apply_library_verbosity

apply_library_verbosity()  # the libraries log and draw bars only with --verbose

BaseModelVersion = Literal["sd_v1", "sd_v2", "sd_v2_v"]


@dataclass
class SDModel:
    """U-Net, text encoder, VAE and tokenizer of one SD 1.x/2.x model.

    ``noise_scheduler_config`` is a Diffusers scheduler config (``from_config`` of DDPM, DDIM,
    Euler, ... accepts it); its ``prediction_type`` agrees with ``v_parameterization``.
    ``tokenizer`` is ``None`` only when the caller loaded without one (merge/extract tools).
    """

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer | None
    noise_scheduler_config: dict[str, Any]
    v2: bool
    v_parameterization: bool
    source: Path

    @property
    def base_model_version(self) -> BaseModelVersion:
        """kohya's ``ss_base_model_version`` value."""
        if not self.v2:
            return "sd_v1"
        return "sd_v2_v" if self.v_parameterization else "sd_v2"
