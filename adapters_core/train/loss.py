"""The training loss and its per-sample weights, as pure functions (kohya-format §11, Loss).

Order, as kohya: element-wise loss (l2/l1/huber/smooth_l1) -> optional mask -> mean over C,H,W
-> x prior-loss weight of reg images -> SNR-based weights -> batch mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapters_core.errors import ConfigError


def huber_c(
    schedule: str,
    c: float,
    scale: float,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    num_train_timesteps: int,
) -> torch.Tensor:
    """The per-sample Huber parameter of kohya's schedules.

    ``constant``: c * scale. ``exponential``: scale * exp(-a t) with a = -ln(c) / T, so it decays
    from ``scale`` at t=0 to c * scale at t=T. ``snr``: (1 - c) / (1 + sigma_t)^2 + c with
    sigma_t = sqrt((1 - alpha_bar) / alpha_bar), large for clean samples, c for noisy ones.
    """
    if schedule == "constant":
        return torch.full(timesteps.shape, c * scale, device=timesteps.device)
    if schedule == "exponential":
        rate = -math.log(c) / num_train_timesteps
        return torch.exp(-rate * timesteps.float()) * scale
    if schedule == "snr":
        alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigma = ((1.0 - alpha_bar) / alpha_bar).sqrt()
        return (1.0 - c) / (1.0 + sigma) ** 2 + c
    raise ConfigError(f"--huber_schedule {schedule}: expected constant, exponential or snr")


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str, huber: torch.Tensor | None = None
) -> torch.Tensor:
    """Unreduced loss; ``huber`` (per sample) is needed by ``huber`` and ``smooth_l1``."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if huber is None:
            raise ValueError(f"loss type {loss_type} needs the per-sample huber parameter")
        c = huber.view(-1, *([1] * (prediction.dim() - 1)))
        pseudo = torch.sqrt((prediction - target) ** 2 + c**2) - c
        return 2 * c * pseudo if loss_type == "huber" else 2 * pseudo
    raise ConfigError(f"--loss_type {loss_type}: expected l2, l1, huber or smooth_l1")


def apply_mask(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Weight an unreduced [B,C,h,w] loss by image masks [B,H,W] in [0,1], area-resized to h,w."""
    mask = F.interpolate(masks.to(loss.dtype).unsqueeze(1), size=loss.shape[2:], mode="area")
    return loss * mask


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al. 2023): min(SNR, g)/SNR, or min(SNR, g)/(SNR+1) for v."""
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


def v_prediction_scale(snr: torch.Tensor) -> torch.Tensor:
    """SNR/(SNR+1) with SNR capped at 1000 (t=0 has infinite SNR)."""
    capped = torch.clamp(snr, max=1000.0)
    return capped / (capped + 1.0)


def debiased_weight(snr: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation: 1/sqrt(SNR), or 1/(SNR+1) for v, with SNR capped at 1000."""
    capped = torch.clamp(snr, max=1000.0)
    return 1.0 / (capped + 1.0) if v_prediction else 1.0 / capped.sqrt()


def snr_weighted(
    loss: torch.Tensor,
    snr: torch.Tensor,
    *,
    v_prediction: bool,
    min_snr_gamma: float | None = None,
    scale_v_pred_loss_like_noise_pred: bool = False,
    v_pred_like_loss: float | None = None,
    debiased_estimation: bool = False,
) -> torch.Tensor:
    """Per-sample loss [B] after kohya's optional SNR-based weightings, in kohya's order."""
    if min_snr_gamma:
        loss = loss * min_snr_weight(snr, min_snr_gamma, v_prediction)
    if scale_v_pred_loss_like_noise_pred:
        loss = loss * v_prediction_scale(snr)
    if v_pred_like_loss:
        loss = loss + loss / v_prediction_scale(snr) * v_pred_like_loss
    if debiased_estimation:
        loss = loss * debiased_weight(snr, v_prediction)
    return loss
