"""A deterministic denoising loss, to compare a model with and without a trained adapter.

Fixed noise (from ``seed``) and fixed timesteps on every training image, VAE mode instead of a
sample, plain captions: the same inputs every call, so two calls differ only by the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adapters_core.models import SDModel
from adapters_core.train import noise as N
from adapters_core.train.dataset import ImageDataset

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def denoising_loss(
    model: SDModel, dataset: ImageDataset, *, seed: int = 0, timesteps: Sequence[int] = DEFAULT_TIMESTEPS
) -> float:
    """Mean epsilon-MSE of the U-Net over the dataset's images x ``timesteps``."""
    scheduler = N.make_noise_scheduler()
    scale = float(getattr(model.vae.config, "scaling_factor", 0.18215))
    generator = torch.Generator().manual_seed(seed)
    device = model.unet.device
    seen = set()
    losses = []
    for record in dataset.records:
        if record.path in seen:
            continue
        seen.add(record.path)
        pixels = dataset.pixels(record.path, record.bucket_reso).unsqueeze(0).to(device, model.vae.dtype)
        latents = model.vae.encode(pixels).latent_dist.mode().float() * scale
        outputs = model.family.encode_text(
            model.components, model.tokenizers, [record.caption], max_token_length=None, clip_skip=None
        )
        batch = {  # as a training batch has them: SDXL's size conditioning reads the sizes
            "captions": [record.caption],
            "original_sizes": [record.original_size],
            "flipped": [False],
            "bucket_reso": record.bucket_reso,
        }
        cond = _cast(model.family.unet_conditioning(outputs, batch), model.unet.dtype)
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(device)
            step = torch.tensor([t], device=device)
            noisy = N.add_noise(scheduler.alphas_cumprod, latents, noise, step)
            prediction = model.unet(noisy.to(model.unet.dtype), step, **cond).sample
            losses.append(torch.mean((prediction.float() - noise) ** 2).item())
    return sum(losses) / len(losses)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of the U-Net's keyword arguments (nested dicts too) in ``dtype``."""
    if isinstance(value, dict):
        return {name: _cast(item, dtype) for name, item in value.items()}
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value
