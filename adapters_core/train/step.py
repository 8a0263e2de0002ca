"""One training micro-step: a dataset batch to the scalar loss (kohya's ``process_batch``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler

from adapters_core.family import TextOutputs
from adapters_core.models import SDModel
from adapters_core.train import loss as L
from adapters_core.train import noise as N
from adapters_core.train.args import TrainArgs
from adapters_core.train.text_cache import TextEncoderCache


@dataclass
class StepContext:
    """The fixed parts of every step."""

    args: TrainArgs
    model: SDModel
    scheduler: DDPMScheduler
    device: torch.device
    autocast: Callable[[], AbstractContextManager[Any]]
    train_text_encoder: bool
    text_cache: TextEncoderCache | None = None  # set once filled: steps then never run the encoder

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.model.vae.config, "scaling_factor", 0.18215))


def batch_latents(ctx: StepContext, batch: dict[str, Any]) -> torch.Tensor:
    """Scaled latents: cached ones, or sampled from the VAE (NaNs replaced by 0, as kohya)."""
    with torch.no_grad():
        if "latents" in batch:
            latents = batch["latents"].to(ctx.device, torch.float32)
        else:
            vae = ctx.model.vae
            chunks = [
                vae.encode(part.to(ctx.device, vae.dtype)).latent_dist.sample()
                for part in batch["images"].split(ctx.args.vae_batch_size)
            ]
            latents = torch.cat(chunks).float()
        return torch.nan_to_num(latents, 0.0) * ctx.latent_scale


def encode_captions(ctx: StepContext, captions: list[str]) -> TextOutputs:
    """Run the text encoders on the captions (as the model's family encodes prompts), with
    gradient only when they train."""
    model = ctx.model
    with torch.set_grad_enabled(ctx.train_text_encoder), ctx.autocast():
        return model.family.encode_text(
            model.components,
            model.tokenizers,
            captions,
            max_token_length=ctx.args.max_token_length,
            clip_skip=ctx.args.clip_skip,
        )


def conditioning(ctx: StepContext, batch: dict[str, Any]) -> dict[str, Any]:
    """The U-Net call's conditioning arguments (the family builds them from the encoded
    captions, from the text cache when there is one, and the batch)."""
    captions = batch["captions"]
    if ctx.text_cache is not None:
        outputs = ctx.text_cache.lookup(captions, ctx.device)
    else:
        outputs = encode_captions(ctx, captions)
    return ctx.model.family.unet_conditioning(outputs, batch)


def training_noise(args: TrainArgs, latents: torch.Tensor) -> torch.Tensor:
    """Gaussian noise with --noise_offset (and its random strength / adaptive scale) and
    --multires_noise_iterations applied."""
    noise = torch.randn_like(latents)
    if args.noise_offset:
        offset = args.noise_offset * float(torch.rand(())) if args.noise_offset_random_strength else args.noise_offset
        noise = N.offset_noise(noise, latents, offset, args.adaptive_noise_scale)
    if args.multires_noise_iterations:
        noise = N.pyramid_noise(noise, args.multires_noise_iterations, args.multires_noise_discount)
    return noise


def compute_loss(ctx: StepContext, batch: dict[str, Any]) -> torch.Tensor:
    """The batch's weighted loss (a scalar, float32)."""
    args, scheduler = ctx.args, ctx.scheduler
    latents = batch_latents(ctx, batch)
    cond = conditioning(ctx, batch)
    noise = training_noise(args, latents)
    num_timesteps = scheduler.config["num_train_timesteps"]
    timesteps = N.sample_timesteps(
        latents.shape[0],
        args.min_timestep or 0,
        num_timesteps if args.max_timestep is None else args.max_timestep,
        ctx.device,
    )
    model_input_noise = noise
    if args.ip_noise_gamma:
        gamma = (
            args.ip_noise_gamma * float(torch.rand(())) if args.ip_noise_gamma_random_strength else args.ip_noise_gamma
        )
        model_input_noise = noise + gamma * torch.randn_like(latents)
    noisy = N.add_noise(scheduler.alphas_cumprod, latents, model_input_noise, timesteps)
    with ctx.autocast():
        prediction = ctx.model.unet(noisy.to(ctx.model.unet.dtype), timesteps, **cond).sample
    if ctx.model.v_parameterization:
        target = N.velocity(scheduler.alphas_cumprod, latents, noise, timesteps)
    else:
        target = noise
    huber = None
    if args.loss_type in ("huber", "smooth_l1"):
        huber = L.huber_c(
            args.huber_schedule, args.huber_c, args.huber_scale, timesteps, scheduler.alphas_cumprod, num_timesteps
        )
    loss = L.elementwise_loss(prediction.float(), target.float(), args.loss_type, huber)
    if "alpha_masks" in batch:
        loss = L.apply_mask(loss, batch["alpha_masks"].to(ctx.device))
    loss = loss.mean(dim=list(range(1, loss.dim())))
    is_reg = batch["is_reg"].to(ctx.device)
    loss = loss * torch.where(is_reg, args.prior_loss_weight, 1.0)
    loss = L.snr_weighted(
        loss,
        N.snr(scheduler.alphas_cumprod, timesteps),
        v_prediction=ctx.model.v_parameterization,
        min_snr_gamma=args.min_snr_gamma,
        scale_v_pred_loss_like_noise_pred=args.scale_v_pred_loss_like_noise_pred,
        v_pred_like_loss=args.v_pred_like_loss,
        debiased_estimation=args.debiased_estimation_loss,
    )
    return loss.mean()
