"""Training step time with ``--cache_text_encoder_outputs`` against the same step without it.

Both run adapt's real step (``adapters_core.train.step.compute_loss``: conditioning, noise, U-Net
forward, loss) plus backward, AdamW step and zero_grad, for a LierLa network on the U-Net only
(``--network_train_unet_only``). Without the cache every step runs the frozen text encoder
(no gradient); with it the step looks the caption's outputs up. Steps alternate between the two
(each preceded once by an untimed warm-up step) and medians are reported, with their ratio.

CPU (default): the tiny model, and an SD 1.5-sized U-Net and text encoder (random weights from
the bundled sd_v1 configs), fp32, batch 1, 16x16 latents, one torch thread.
GPU (``--device cuda``, or auto when CUDA is available): SD 1.5 sizes at 64x64 latents
(512 px), fp16 base weights under autocast, batch 1.

    .venv/bin/python bench/text_cache_step.py                  # CPU, about 2 minutes
    .venv/bin/python bench/text_cache_step.py --models tiny    # seconds
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adapters_core.models import SDModel, build_sd15_text_encoder, build_sd15_unet, build_tiny_model  # noqa: E402
from adapters_core.network import Network  # noqa: E402
from adapters_core.train.args import TrainArgs  # noqa: E402
from adapters_core.train.noise import make_noise_scheduler  # noqa: E402
from adapters_core.train.step import StepContext, compute_loss, encode_captions  # noqa: E402
from adapters_core.train.text_cache import TextEncoderCache  # noqa: E402

CAPTION = "sks shape, a red circle on a light grey background, centred, flat colours, high quality"


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> SDModel:
    """The tiny model, or SD 1.5-sized U-Net and text encoder on the tiny model's VAE and tokenizer."""
    model = build_tiny_model(seed=0)
    if name == "sd15":
        model = replace(model, components={**model.components, "unet": build_sd15_unet("cpu"),
                                          "text_encoder": build_sd15_text_encoder("cpu")})
    for module in (model.unet, model.text_encoder, model.vae):
        module.requires_grad_(False).to(device, dtype)  # type: ignore[arg-type]  # diffusers' typing of ModelMixin.to
    model.text_encoder.eval()
    return model


def step(ctx: StepContext, batch: dict[str, object], optimizer: torch.optim.Optimizer) -> None:
    loss = compute_loss(ctx, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(name: str, device: torch.device, latent: int, rounds: int) -> None:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = build_model(name, device, dtype)
    network = Network.create("lora", unet=model.unet, options={"network_dim": 4, "network_alpha": 4.0})
    network.to(device, torch.float32)
    network.apply().train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if device.type == "cuda" else nullcontext
    args = TrainArgs(network_train_unet_only=True)
    plain = StepContext(args, model, make_noise_scheduler(), device, autocast, train_text_encoder=False)
    cache = TextEncoderCache()
    cache.outputs[CAPTION] = {k: v[0].cpu() for k, v in encode_captions(plain, [CAPTION]).items()}
    cached = replace(plain, text_cache=cache)
    batch = {
        "latents": torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0)),
        "captions": [CAPTION],
        "is_reg": torch.tensor([False]),
    }
    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    started = time.perf_counter()
    for round_index in range(rounds + 1):
        for label, ctx in (("uncached", plain), ("cached", cached)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            step(ctx, batch, optimizer)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index:  # round 0 is the warm-up
                times[label].append(time.perf_counter() - begin)
    median = {label: statistics.median(values) for label, values in times.items()}
    print(
        f"{name}: {device.type} {str(dtype).removeprefix('torch.')}, batch 1, {latent}x{latent} latents, "
        f"{rounds} rounds ({time.perf_counter() - started:.0f} s): uncached {median['uncached'] * 1000:.1f} ms, "
        f"cached {median['cached'] * 1000:.1f} ms, cached/uncached {median['cached'] / median['uncached']:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,sd15", help="comma list of tiny, sd15")
    parser.add_argument("--rounds", type=int, default=0, help="timed steps of each kind (default: 30 tiny, 5 sd15)")
    parser.add_argument("--latent", type=int, default=0, help="latent size (default 16 on CPU, 64 on CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    latent = args.latent or (64 if use_cuda else 16)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for name in args.models.split(","):
        measure(name, device, latent, args.rounds or (30 if name == "tiny" else 5))


if __name__ == "__main__":
    main()
