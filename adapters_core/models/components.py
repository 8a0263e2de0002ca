"""The loaded parts of a base model, as the rest of adapt sees them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from adapters_core.family import ModelFamily

if TYPE_CHECKING:
    from diffusers import AutoencoderKL



@dataclass
class SDModel:
    """The components, VAE and tokenizers of one Stable Diffusion model of some family.

    ``components`` holds the adaptable modules by the family's component names (``unet``,
    ``text_encoder``, ``text_encoder_2`` ...); ``tokenizers`` one tokenizer per text encoder,
    by the same names (``None`` when loaded without one: merge/extract tools).
    ``noise_scheduler_config`` is a Diffusers scheduler config (``from_config`` of DDPM,
    DDIM, Euler, ... accepts it); its ``prediction_type`` agrees with ``v_parameterization``.
    """

    family: ModelFamily
    components: dict[str, nn.Module]
    vae: AutoencoderKL
    tokenizers: dict[str, Any]
    noise_scheduler_config: dict[str, Any]
    v_parameterization: bool
    source: Path

    @property
    def unet(self) -> Any:
        return self.components["unet"]

    @property
    def text_encoder(self) -> Any:
        """The first text encoder (the family's first text-encoder component)."""
        return self.components[self.text_encoder_names[0]]

    @property
    def tokenizer(self) -> Any:
        """The first text encoder's tokenizer."""
        return self.tokenizers.get(self.text_encoder_names[0])

    @property
    def text_encoder_names(self) -> list[str]:
        return self.family.text_encoder_names

    def text_encoders(self) -> Iterator[tuple[str, nn.Module]]:
        """Every text encoder, by component name, in the family's order."""
        for name in self.text_encoder_names:
            yield name, self.components[name]

    def modules(self) -> Iterator[nn.Module]:
        """Every module of the model: the components, then the VAE."""
        yield from self.components.values()
        yield self.vae

    @property
    def base_model_version(self) -> str:
        """kohya's ``ss_base_model_version`` value."""
        return self.family.base_model_version(self.v_parameterization)
