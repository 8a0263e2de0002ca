"""One LoRA training step of kohya's ``networks/lora.py`` against adapt's LierLa and PEFT.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kohya_train_step.py [--sd-scripts PATH] [--rounds 5]

Two worker processes build the same SD 1.5 U-Net from adapt's bundled config
(adapters_core/models/configs/sd_v1/unet, random weights, fp32, seed 0): one in adapt's venv
(adapt LierLa and PEFT on exactly adapt's layers, attached in turn as in bench/train_step.py),
one in kohya's venv (bench/kohya_env.py) with ``lora.create_network`` applied to the U-Net.
Before timing, the bench checks that kohya's network adapts exactly adapt's 192 layers. Each
round asks every competitor for one step (forward on noisy latents, MSE loss, backward, AdamW
step, zero_grad; a fresh optimizer per step on both sides), so the steps are interleaved;
the first step of each is an untimed warm-up; medians are reported. Rank 4, alpha 4, batch 1,
16x16 latents, one torch thread per worker by default. The two venvs have different diffusers
(kohya pins 0.32.1), so each worker also times the bare U-Net's step (gradient to the input
latents, no adapter), and the adapters' own cost is reported over it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
UNET_CONFIG = BENCH.parent / "adapters_core" / "models" / "configs" / "sd_v1" / "unet" / "config.json"
RANK, ALPHA = 4, 4.0


# -- workers (each in its own venv; they talk one JSON line per request) -------------------------
def step_inputs(latent: int) -> tuple[Any, ...]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 4, latent, latent, generator=generator),
        torch.tensor([500]),
        torch.randn(1, 77, 768, generator=generator),
        torch.randn(1, 4, latent, latent, generator=generator),
    )


def timed_step(unet: Any, inputs: tuple[Any, ...], params: list[Any]) -> float:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sample, timestep, context, target = inputs
    started = time.perf_counter()
    loss = F.mse_loss(unet(sample, timestep, context).sample.float(), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def bare_step(unet: Any, inputs: tuple[Any, ...]) -> Callable[[], float]:
    """The same step with no adapter: the gradient flows to the input latents instead (the
    U-Net's own forward and backward, which differ between the two venvs' diffusers)."""
    sample, *rest = inputs
    latents = sample.clone().requires_grad_(True)
    return lambda: timed_step(unet, (latents, *rest), [latents])


def kohya_worker(sd_scripts: Path, inputs: tuple[Any, ...]) -> tuple[dict[str, Callable[[], float]], list[str]]:
    import torch

    sys.path.insert(0, str(BENCH))
    from kohya_launch import import_torchvision_without_compiled_ops

    import_torchvision_without_compiled_ops()  # before diffusers and transformers import it
    from diffusers import UNet2DConditionModel

    sys.path[:0] = [str(sd_scripts), str(sd_scripts / "networks")]
    import lora  # kohya's networks/lora.py

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads(UNET_CONFIG.read_text(encoding="utf-8")))
    unet.requires_grad_(False)
    bare = bare_step(unet, inputs)  # before the network patches the U-Net's layers
    network = lora.create_network(1.0, RANK, ALPHA, None, [], unet)
    network.apply_to([], unet, apply_text_encoder=False, apply_unet=True)
    network.train()
    params = [p for p in network.parameters() if p.requires_grad]
    names = sorted(module.lora_name for module in network.unet_loras)
    return {"kohya lora.py": lambda: timed_step(unet, inputs, params), "kohya bare U-Net": bare}, names


def adapt_worker(inputs: tuple[Any, ...]) -> tuple[dict[str, Callable[[], float]], list[str]]:
    import torch

    sys.path.insert(0, str(BENCH))
    from train_step import adapt_competitor, peft_competitor

    from adapters_core.models import build_sd15_unet
    from adapters_core.network import Network

    torch.manual_seed(0)
    unet = build_sd15_unet("cpu")
    unet.requires_grad_(False)
    lierla = Network.create("lora", unet=unet, options={"network_dim": RANK, "network_alpha": ALPHA})
    competitors = [adapt_competitor(lierla, "adapt LierLa"), peft_competitor(unet, lierla, "PEFT LierLa")]

    def stepper(competitor: Any) -> Callable[[], float]:
        def step() -> float:
            params = competitor.attach()
            try:
                return timed_step(unet, inputs, params)
            finally:
                competitor.detach()

        return step

    steps = {c.name: stepper(c) for c in competitors}
    return {**steps, "adapt bare U-Net": bare_step(unet, inputs)}, sorted(lierla.targets)


def serve(kind: str, sd_scripts: Path | None, latent: int, threads: int) -> None:
    """Answer ``step NAME`` lines on stdin with the step's seconds, after a ``ready`` line."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(threads)
    inputs = step_inputs(latent)
    if kind == "kohya":
        assert sd_scripts is not None, "the kohya worker needs --sd-scripts"
        steps, names = kohya_worker(sd_scripts, inputs)
    else:
        steps, names = adapt_worker(inputs)
    print(json.dumps({"competitors": list(steps), "layers": names}), flush=True)
    for line in sys.stdin:
        print(json.dumps(steps[line.strip()]()), flush=True)


# -- the orchestrator -----------------------------------------------------------------------------
class Worker:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        ready = self._answer()
        self.competitors: list[str] = ready["competitors"]
        self.layers: list[str] = ready["layers"]

    def _answer(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.process.args!r} ended with code {self.process.wait()}")
        return json.loads(line)

    def step(self, name: str) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        return float(self._answer())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-scripts", help="kohya sd-scripts checkout (default: $KOHYA_SD_SCRIPTS or bench/.kohya)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps of each competitor")
    parser.add_argument("--latent", type=int, default=16, help="latent size (16 = 128 px)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--worker", choices=["adapt", "kohya"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sd_scripts = Path(args.sd_scripts) if args.sd_scripts else None
        serve(args.worker, sd_scripts, args.latent, args.threads)
        return
    from kohya_env import kohya_or_skip

    if (found := kohya_or_skip(args.sd_scripts)) is None:
        return
    sd_scripts, python = found
    options = ["--latent", str(args.latent), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    workers = [
        Worker([sys.executable, __file__, "--worker", "adapt", *options], env),
        Worker([str(python), __file__, "--worker", "kohya", "--sd-scripts", str(sd_scripts), *options], env),
    ]
    adapt, kohya = workers
    if kohya.layers != adapt.layers:
        raise SystemExit(f"kohya's network adapts {len(kohya.layers)} layers, not adapt's {len(adapt.layers)}")
    times: dict[str, list[float]] = {name: [] for w in workers for name in w.competitors}
    for round_index in range(args.rounds + 1):  # round 0: warm-up
        order = workers if round_index % 2 == 0 else workers[::-1]
        for worker in order:
            for name in worker.competitors:
                seconds = worker.step(name)
                if round_index:
                    times[name].append(seconds)
    for worker in workers:
        worker.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"SD 1.5 U-Net, CPU fp32, batch 1, {args.latent}x{args.latent} latents, rank {RANK}, "
        f"{len(adapt.layers)} layers, {args.rounds} rounds, {args.threads} thread(s), "
        f"{time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f}"
    )
    for name, value in median.items():
        print(f"{name:<16} median {value * 1000:8.1f} ms   all: {', '.join(f'{t:.2f}' for t in times[name])}")
    ours, kohya_step = median["adapt LierLa"], median["kohya lora.py"]
    print(f"adapt/kohya: {ours / kohya_step:.3f}   adapt/PEFT: {ours / median['PEFT LierLa']:.3f}")
    adapter_cost = {who: median[f"{who} LierLa" if who != "kohya" else "kohya lora.py"] - median[f"{bare} bare U-Net"]
                    for who, bare in (("adapt", "adapt"), ("PEFT", "adapt"), ("kohya", "kohya"))}
    print("over each venv's bare U-Net step: " + ", ".join(f"{k} +{v * 1000:.0f} ms" for k, v in adapter_cost.items()))


if __name__ == "__main__":
    main()
