"""The forward diffusion process of training, as pure functions on tensors (kohya-format §11).

Randomness comes from the global torch RNG, which the training loop re-seeds for every step
(see :func:`adapters_core.train.loop.step_seed`), so a step's noise is a function of the seed
and the step number.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

# kohya's training scheduler for SD 1.x/2.x; the base model's own scheduler config is not used.
KOHYA_DDPM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
}


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so that the last timestep has SNR 0 (Lin et al. 2023, arXiv:2305.08891).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first is unchanged.
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


def make_noise_scheduler(*, zero_terminal_snr: bool = False) -> DDPMScheduler:
    """kohya's DDPM scheduler; with ``zero_terminal_snr`` its betas are rescaled."""
    scheduler = DDPMScheduler(**KOHYA_DDPM)
    if zero_terminal_snr:
        scheduler.betas = zero_terminal_snr_betas(scheduler.betas)
        scheduler.alphas = 1.0 - scheduler.betas
        scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    return scheduler


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep (inf at zero noise)."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1.0 - alpha_bar)


def sample_timesteps(batch: int, min_timestep: int, max_timestep: int, device: torch.device) -> torch.Tensor:
    """t ~ U{min..max-1} per sample (drawn on the CPU, as kohya, so CPU and GPU runs agree)."""
    if min_timestep < max_timestep:
        timesteps = torch.randint(min_timestep, max_timestep, (batch,))
    else:
        timesteps = torch.full((batch,), max_timestep)
    return timesteps.long().to(device)


def offset_noise(
    noise: torch.Tensor, latents: torch.Tensor, offset: float, adaptive_scale: float | None = None
) -> torch.Tensor:
    """Noise offset: add ``offset * N(0,1)`` per sample and channel (shape B,C,1,1).

    With ``adaptive_scale`` a, the offset grows by a * |mean of the latents| per channel
    (clamped at 0).
    """
    if adaptive_scale is not None:
        mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = (offset + adaptive_scale * mean).clamp(min=0.0)  # type: ignore[assignment]
    shape = (latents.shape[0], latents.shape[1], 1, 1)
    return noise + offset * torch.randn(shape, device=latents.device, dtype=noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise: add upsampled coarser noise at random scales, renormalised."""
    batch, channels, height, width = noise.shape
    upsample = torch.nn.Upsample(size=(height, width), mode="bilinear")
    result = noise.clone()
    for i in range(iterations):
        ratio = float(torch.rand(())) * 2 + 2
        h, w = max(1, int(height / ratio**i)), max(1, int(width / ratio**i))
        coarse = torch.randn(batch, channels, h, w, device=noise.device, dtype=noise.dtype)
        result = result + upsample(coarse) * discount**i
        if h == 1 or w == 1:
            break
    return result / result.std()


def add_noise(
    alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise."""
    alpha_bar = alphas_cumprod.to(latents.device)[timesteps].to(latents.dtype).view(-1, 1, 1, 1)
    return alpha_bar.sqrt() * latents + (1.0 - alpha_bar).sqrt() * noise


def velocity(
    alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """v-prediction target: v = sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * x_0."""
    alpha_bar = alphas_cumprod.to(latents.device)[timesteps].to(latents.dtype).view(-1, 1, 1, 1)
    return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * latents
