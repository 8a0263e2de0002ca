"""One training step of adapt's LierLa, C3Lier and DyLoRA against PEFT and LyCORIS on the same layers.

A step is: U-Net forward on noisy latents, MSE loss, backward, AdamW step, zero_grad; only the
adapter's parameters train. All competitors share one U-Net (random weights) and adapt the
exact same layers (the kohya target set, taken from adapt's network): PEFT through
``unet.add_adapter(LoraConfig(target_modules=[full module names]))``, LyCORIS through
``lycoris.kohya.create_network`` with a preset naming kohya's container classes (its default
presets do not fit a diffusers U-Net). Steps are interleaved (every round runs every
competitor once; the first round is preceded by an untimed warm-up step) and medians are reported.

Models (``--models``, bench/models.py): the tiny U-Net and SD 1.5- and SDXL-sized U-Nets from
their families' bundled configs, random weights; the U-Net's conditioning is what the family
makes for training (SDXL: both encoders' states, the pooled embedding and the size ids).
CPU (default): fp32, batch 1, 16x16 latents, one torch thread (two-thread timings swing tenfold
when another job shares the 2 cores).
GPU (when CUDA is available, or ``--device cuda``): the family's native resolution (SD 1.5
512x512, SDXL 1024x1024), batch 1, fp16 base weights with autocast, gradient checkpointing,
AdamW8bit (bitsandbytes; AdamW if it is missing); reports it/s and peak VRAM
(torch.cuda.max_memory_allocated).

    .venv/bin/python bench/train_step.py                 # CPU, about 3 minutes
    .venv/bin/python bench/train_step.py --models tiny   # seconds
    .venv/bin/python bench/train_step.py --models sdxl --adapters lierla --peers peft  # ~13.7 GB RAM
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from models import BenchModel, bench_model, build_components, move, unet_conditioning  # noqa: E402

from adapters_core.family import ModelFamily  # noqa: E402
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
    cpu_times: list[float] = field(default_factory=list)  # this process's CPU time (user + system)
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
    inputs: tuple[torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor],
    competitor: Competitor,
    step: int,
    optimizer: torch.optim.Optimizer,
    autocast: torch.autocast | None,
) -> None:
    sample, timestep, conditioning, target = inputs
    competitor.before_step(step)
    if autocast is not None:
        with autocast:
            prediction = unet(sample, timestep, **conditioning).sample
    else:
        prediction = unet(sample, timestep, **conditioning).sample
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
    conditioning: dict[str, Any],
    rounds: int,
    device: torch.device,
    dtype: torch.dtype,
    eight_bit: bool,
) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, latent, latent, generator=generator).to(device, dtype),
        torch.tensor([500], device=device),
        move(conditioning, device, dtype),
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
            started, cpu_started = time.perf_counter(), time.process_time()
            run_step(unet, inputs, competitor, round_index + 1, optimizer, autocast)
            synchronize(device)
            competitor.times.append(time.perf_counter() - started)
            competitor.cpu_times.append(time.process_time() - cpu_started)
            if device.type == "cuda":
                competitor.peak_bytes = max(competitor.peak_bytes, torch.cuda.max_memory_allocated())
            del optimizer
            competitor.detach()


ADAPTERS = {"lierla": ("lora", "LierLa", LIERLA_CONTAINERS), "c3lier": ("c3lier", "C3Lier", C3LIER_CONTAINERS)}


def competitors_for(
    unet: Any, family: ModelFamily, preset_dir: Path, adapters: list[str], peers: list[str]
) -> list[Competitor]:
    """adapt's networks of ``adapters`` (lierla, c3lier, dylora: LierLa with unit 1) on the U-Net,
    and each peer of ``peers`` (peft, lycoris) on the same layers as adapt's LierLa/C3Lier."""
    options = {"network_dim": RANK, "network_alpha": ALPHA}
    competitors = []
    for adapter in adapters:
        kind, label, containers = ADAPTERS.get(adapter, ("dylora", "DyLoRA", LIERLA_CONTAINERS))
        extra = {"unit": 1} if kind == "dylora" else {}
        network = Network.create(kind, family=family, components={"unet": unet}, options={**options, **extra})
        competitors.append(adapt_competitor(network, f"adapt {label}"))
        if kind == "dylora":
            continue
        added = []
        if "peft" in peers:
            added.append(peft_competitor(unet, network, f"PEFT {label}"))
        if "lycoris" in peers:
            added.append(lycoris_competitor(unet, containers, kind == "c3lier", f"LyCORIS {label}", preset_dir))
        competitors += added
        for peer in added:  # every peer adapts exactly the same layers as adapt
            if peer.layers != sorted(network.targets):
                raise SystemExit(f"{peer.name}: adapts {len(peer.layers)} layers, not adapt's {len(network.targets)}")
    return competitors


def report(title: str, competitors: list[Competitor], device: torch.device) -> None:
    """Median wall time per competitor and the ratios to the peers; on CPU also the median
    CPU time (with one thread, the time the step computed: steadier than the wall time when
    other jobs hold the cores)."""
    median = {c.name: statistics.median(c.times) for c in competitors}
    cpu = {c.name: statistics.median(c.cpu_times) for c in competitors}
    extra = "  peak VRAM" if device.type == "cuda" else "  median CPU s  all rounds wall / CPU (s)"
    print(f"\n## {title}")
    print(f"{'adapter':<16} {'modules':>7} {'median ms':>10} {'it/s':>7}{extra}")
    for c in competitors:
        line = f"{c.name:<16} {len(c.layers):>7} {median[c.name] * 1000:>10.1f} {1 / median[c.name]:>7.2f}"
        if device.type == "cuda":
            line += f"  {c.peak_bytes / 2**30:.2f} GiB"
        else:
            rounds = ", ".join(f"{t:.3g} / {u:.3g}" for t, u in zip(c.times, c.cpu_times, strict=True))
            line += f"  {cpu[c.name]:>12.3g}  {rounds}"
        print(line)
    for kind in ("LierLa", "C3Lier"):
        for peer in ("PEFT", "LyCORIS"):
            ours, theirs = f"adapt {kind}", f"{peer} {kind}"
            if ours in median and theirs in median:
                print(f"adapt/{peer} {kind}: {median[ours] / median[theirs]:.3f} (CPU {cpu[ours] / cpu[theirs]:.3f})")
    if "adapt DyLoRA" in median and "PEFT LierLa" in median:
        print(f"adapt DyLoRA/PEFT LierLa: {median['adapt DyLoRA'] / median['PEFT LierLa']:.3f}")


def build_unet(model: BenchModel, device: torch.device, latent: int) -> tuple[Any, dict[str, Any]]:
    """The model's U-Net (random weights, fp32 on CPU; fp16 with gradient checkpointing on CUDA)
    and its conditioning for one caption; the text encoders are built with it (seed 0) and
    dropped once they have encoded the caption."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    components = build_components(model, device.type, dtype)
    conditioning = unet_conditioning(model, components, latent)
    unet: Any = components.pop("unet")  # diffusers' UNet2DConditionModel
    del components
    unet.requires_grad_(False)
    if device.type == "cuda":
        unet.enable_gradient_checkpointing()
        unet.train()
    return unet, conditioning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,sd15", help="comma list of tiny, sd15, sdxl")
    parser.add_argument("--adapters", default="lierla,c3lier,dylora", help="comma list of lierla, c3lier, dylora")
    parser.add_argument("--peers", default="peft,lycoris", help="comma list of peft, lycoris")
    parser.add_argument("--rounds", type=int, default=0, help="timed steps per competitor (default: 15 tiny, else 3)")
    parser.add_argument(
        "--latent", type=int, default=0, help="latent size (default 16 = 128 px on CPU; the family's native on CUDA)"
    )
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
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, rank {RANK}, alpha {ALPHA}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    eight_bit = False
    if device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            eight_bit = True
        except ImportError:
            print("bitsandbytes is not installed: AdamW instead of AdamW8bit")
    with tempfile.TemporaryDirectory() as preset_dir:
        for name in args.models.split(","):
            model = bench_model(name)
            latent = args.latent or (model.family.default_resolution(False) // 8 if device.type == "cuda" else 16)
            started = time.perf_counter()
            unet, conditioning = build_unet(model, device, latent)
            competitors = competitors_for(
                unet, model.family, Path(preset_dir), args.adapters.split(","), args.peers.split(",")
            )
            print(f"{model.label}: built in {time.perf_counter() - started:.0f} s", flush=True)
            started = time.perf_counter()
            benchmark(
                unet,
                competitors,
                latent=latent,
                conditioning=conditioning,
                rounds=args.rounds or (15 if name == "tiny" else 3),
                device=device,
                dtype=torch.float16 if device.type == "cuda" else torch.float32,
                eight_bit=eight_bit,
            )
            precision = "fp16, gradient checkpointing" if device.type == "cuda" else "fp32"
            optimizer = "AdamW8bit" if eight_bit else "AdamW"
            where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
            report(
                f"{model.label} U-Net, {where}, {precision}, {optimizer}, batch 1, {latent}x{latent} latents, "
                f"{len(competitors[0].times)} rounds ({time.perf_counter() - started:.0f} s), "
                f"load average {os.getloadavg()[0]:.2f}",
                competitors,
                device,
            )
            del unet, competitors


if __name__ == "__main__":
    main()
