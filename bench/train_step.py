"""One training step of adapt's LierLa, C3Lier and DyLoRA against PEFT and LyCORIS on the same layers.

A step is: U-Net forward on noisy latents, MSE loss, backward, AdamW step, zero_grad; only the
adapter's parameters train. All competitors share one U-Net (random weights) and adapt the
exact same layers (the kohya target set, taken from adapt's network): PEFT through
``unet.add_adapter(LoraConfig(target_modules=[full module names]))``, LyCORIS through
``lycoris.kohya.create_network`` with a preset naming kohya's container classes (its default
presets do not fit a diffusers U-Net). Steps are interleaved (every round runs every
competitor once; the first round is preceded by an untimed warm-up step) and medians are reported.

CPU (default): the tiny U-Net and an SD 1.5-sized U-Net, fp32, batch 1, 16x16 latents, one torch
thread (two-thread timings swing tenfold when another job shares the 2 cores).
GPU (when CUDA is available, or ``--device cuda``): SD 1.5 at 512x512 (64x64 latents), batch 1,
fp16 base weights with autocast, gradient checkpointing, AdamW8bit (bitsandbytes; AdamW if it
is missing); reports it/s and peak VRAM (torch.cuda.max_memory_allocated).

    .venv/bin/python bench/train_step.py                 # CPU, about 3 minutes
    .venv/bin/python bench/train_step.py --models tiny   # seconds
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adapters_core.models import build_sd15_unet, build_tiny_model  # noqa: E402
from adapters_core.network import Network  # noqa: E402

RANK, ALPHA = 4, 4.0
LIERLA_CONTAINERS = ["Transformer2DModel"]
C3LIER_CONTAINERS = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]


@dataclass
class Competitor:
    """One adapter implementation on the shared U-Net."""

    name: str
    attach: Callable[[], list[torch.nn.Parameter]]  # returns the trainable parameters
    detach: Callable[[], object]
    before_step: Callable[[int], None] = lambda step: None
    layers: list[str] = field(default_factory=list)  # kohya names of the adapted layers
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0


def adapt_competitor(network: Network, label: str) -> Competitor:
    """An adapt network (created on the layers' device, weights in fp32), applied while it runs."""

    def attach() -> list[torch.nn.Parameter]:
        network.apply().train()
        return list(network.parameters())

    return Competitor(label, attach, network.remove, network.on_train_step, sorted(network.targets))


def peft_competitor(unet: Any, network: Network, label: str) -> Competitor:
    """PEFT LoRA on exactly the layers of an adapt network (full module paths as targets)."""
    from peft import LoraConfig

    names = [target.module_path for target in network.targets.values()]

    def attach() -> list[torch.nn.Parameter]:
        # peft types lora_alpha as int; it takes any number (scaling = lora_alpha / r)
        config = LoraConfig(
            r=RANK, lora_alpha=ALPHA, target_modules=names, init_lora_weights=True  # type: ignore[arg-type]
        )
        unet.add_adapter(config)
        return [p for n, p in unet.named_parameters() if "lora_" in n]

    return Competitor(label, attach, unet.unload_lora, layers=sorted(network.targets))


def lycoris_competitor(
    unet: torch.nn.Module, containers: list[str], conv: bool, label: str, preset_dir: Path
) -> Competitor:
    from lycoris.kohya import create_network

    preset = preset_dir / f"{label}.toml"
    preset.write_text(
        f"enable_conv = {'true' if conv else 'false'}\n"
        f"unet_target_module = {containers!r}\nunet_target_name = []\n"
        "text_encoder_target_module = []\ntext_encoder_target_name = []\n".replace("'", '"'),
        encoding="utf-8",
    )
    network = create_network(
        1.0, RANK, ALPHA, None, [], unet, preset=str(preset), algo="lora", conv_dim=RANK, conv_alpha=ALPHA
    )
    network.apply_to([], unet, apply_text_encoder=False, apply_unet=True)
    for lora in network.unet_loras:
        lora.restore()
    network.to(next(unet.parameters()).device, torch.float32)

    def attach() -> list[torch.nn.Parameter]:
        for lora in network.unet_loras:
            lora.apply_to()
        network.train()
        return list(network.parameters())

    def detach() -> None:
        for lora in network.unet_loras:
            lora.restore()

    return Competitor(label, attach, detach, layers=sorted(lora.lora_name for lora in network.unet_loras))


def make_optimizer(params: list[torch.nn.Parameter], eight_bit: bool) -> torch.optim.Optimizer:
    if eight_bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def run_step(
    unet: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    competitor: Competitor,
    step: int,
    optimizer: torch.optim.Optimizer,
    autocast: torch.autocast | None,
) -> None:
    sample, timestep, context, target = inputs
    competitor.before_step(step)
    if autocast is not None:
        with autocast:
            prediction = unet(sample, timestep, context).sample
    else:
        prediction = unet(sample, timestep, context).sample
    loss = F.mse_loss(prediction.float(), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(
    unet: Any,
    competitors: list[Competitor],
    *,
    latent: int,
    context_dim: int,
    rounds: int,
    device: torch.device,
    dtype: torch.dtype,
    eight_bit: bool,
) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, latent, latent, generator=generator).to(device, dtype),
        torch.tensor([500], device=device),
        torch.randn(1, 77, context_dim, generator=generator).to(device, dtype),
        torch.randn(1, 4, latent, latent, generator=generator).to(device),
    )
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None
    for round_index in range(rounds):
        for competitor in competitors:
            optimizer = make_optimizer(competitor.attach(), eight_bit)
            if round_index == 0:  # warm-up: allocator, lazy module and optimizer state
                run_step(unet, inputs, competitor, 0, optimizer, autocast)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            synchronize(device)
            started = time.perf_counter()
            run_step(unet, inputs, competitor, round_index + 1, optimizer, autocast)
            synchronize(device)
            competitor.times.append(time.perf_counter() - started)
            if device.type == "cuda":
                competitor.peak_bytes = max(competitor.peak_bytes, torch.cuda.max_memory_allocated())
            del optimizer
            competitor.detach()


def competitors_for(unet: Any, preset_dir: Path) -> list[Competitor]:
    options = {"network_dim": RANK, "network_alpha": ALPHA}
    lierla, c3lier = (Network.create(kind, unet=unet, options=options) for kind in ("lora", "c3lier"))
    competitors = [
        adapt_competitor(lierla, "adapt LierLa"),
        peft_competitor(unet, lierla, "PEFT LierLa"),
        lycoris_competitor(unet, LIERLA_CONTAINERS, False, "LyCORIS LierLa", preset_dir),
        adapt_competitor(c3lier, "adapt C3Lier"),
        peft_competitor(unet, c3lier, "PEFT C3Lier"),
        lycoris_competitor(unet, C3LIER_CONTAINERS, True, "LyCORIS C3Lier", preset_dir),
        adapt_competitor(Network.create("dylora", unet=unet, options={**options, "unit": 1}), "adapt DyLoRA"),
    ]
    for competitor in competitors:  # every peer adapts exactly the same layers as adapt
        reference = sorted(c3lier.targets) if "C3Lier" in competitor.name else sorted(lierla.targets)
        if competitor.layers != reference:
            raise SystemExit(f"{competitor.name}: adapts {len(competitor.layers)} layers, not adapt's {len(reference)}")
    return competitors


def report(title: str, competitors: list[Competitor], device: torch.device) -> None:
    median = {c.name: statistics.median(c.times) for c in competitors}
    print(f"\n## {title}")
    print(
        f"{'adapter':<16} {'modules':>7} {'median ms':>10} {'it/s':>7}"
        + ("  peak VRAM" if device.type == "cuda" else "")
    )
    for c in competitors:
        line = f"{c.name:<16} {len(c.layers):>7} {median[c.name] * 1000:>10.1f} {1 / median[c.name]:>7.2f}"
        if device.type == "cuda":
            line += f"  {c.peak_bytes / 2**30:.2f} GiB"
        print(line)
    for kind in ("LierLa", "C3Lier"):
        ours = median[f"adapt {kind}"]
        print(
            f"adapt/PEFT {kind}: {ours / median[f'PEFT {kind}']:.3f}   "
            f"adapt/LyCORIS {kind}: {ours / median[f'LyCORIS {kind}']:.3f}"
        )
    print(f"adapt DyLoRA/PEFT LierLa: {median['adapt DyLoRA'] / median['PEFT LierLa']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,sd15", help="comma list of tiny, sd15 (CPU runs)")
    parser.add_argument("--rounds", type=int, default=0, help="timed steps per competitor (default: 15 tiny, 3 sd15)")
    parser.add_argument("--latent", type=int, default=16, help="CPU latent size (16 = 128 px)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine; 0: torch's default)"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, rank {RANK}, alpha {ALPHA}")
    with tempfile.TemporaryDirectory() as preset_dir:
        if device.type == "cuda":
            try:
                import bitsandbytes  # noqa: F401

                eight_bit = True
            except ImportError:
                eight_bit = False
                print("bitsandbytes is not installed: AdamW instead of AdamW8bit")
            unet = build_sd15_unet(device="cuda", dtype=torch.float16)
            unet.requires_grad_(False)
            unet.enable_gradient_checkpointing()
            unet.train()
            competitors = competitors_for(unet, Path(preset_dir))
            benchmark(
                unet,
                competitors,
                latent=64,
                context_dim=768,
                rounds=args.rounds or 5,
                device=device,
                dtype=torch.float16,
                eight_bit=eight_bit,
            )
            report(
                f"SD 1.5 U-Net, 512x512, batch 1, fp16, gradient checkpointing, "
                f"{'AdamW8bit' if eight_bit else 'AdamW'}, {torch.cuda.get_device_name()}",
                competitors,
                device,
            )
            return
        for model_name in args.models.split(","):
            if model_name == "tiny":
                unet, context_dim, rounds = build_tiny_model(seed=0).unet, 32, args.rounds or 15
            else:
                unet, context_dim, rounds = build_sd15_unet(device="cpu"), 768, args.rounds or 3
            unet.requires_grad_(False)
            competitors = competitors_for(unet, Path(preset_dir))
            started = time.perf_counter()
            benchmark(
                unet,
                competitors,
                latent=args.latent,
                context_dim=context_dim,
                rounds=rounds,
                device=device,
                dtype=torch.float32,
                eight_bit=False,
            )
            report(
                f"{'tiny' if model_name == 'tiny' else 'SD 1.5'} U-Net, CPU fp32, batch 1, "
                f"{args.latent}x{args.latent} latents, {rounds} rounds ({time.perf_counter() - started:.0f} s)",
                competitors,
                device,
            )
            del unet, competitors


if __name__ == "__main__":
    main()
