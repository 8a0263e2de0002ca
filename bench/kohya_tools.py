"""adapt's merge, svd-merge, extract and resize side by side with kohya sd-scripts' scripts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/kohya_tools.py [--sd-scripts PATH] [--workdir DIR] [--repeats 2]

On one SD 1.5-sized random checkpoint (U-Net, text encoder and VAE, fp16, LDM single file)
and random kohya LoRA files (rank 32, alpha 16, on the 264 LierLa layers), each tool runs as
the command a user types, kohya's ``networks/<script>.py`` in its own venv (bench/kohya_env.py)
and ``adapt <command>`` in this one, with the same flags, interleaved (each repeat runs both,
alternating which goes first). Times are the wall and CPU (user + system) seconds of the whole
command (imports and file I/O included), each the best of ``--repeats``. Each result's error is
measured against the exact answer in float64 over all adapted layers: the merged weights
against ``W + up @ down * scale``; svd-merge and resize against the summed (or original) full
deltas; extract against the exact difference of the two checkpoints. Without a sd-scripts checkout it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from kohya_env import ADAPT, kohya_command, kohya_or_skip, timed  # noqa: E402
from models import bench_model, lierla_shapes, write_checkpoint  # noqa: E402
from tools import lora_tensors, synthetic_difference  # noqa: E402

RANK = 32


# -- inputs ---------------------------------------------------------------------------------------
def adapted_layers(checkpoint: Path, shapes: dict[str, torch.Size]) -> dict[str, tuple[str, torch.Size]]:
    """kohya module name -> (LDM key, weight shape) in an SD 1.x file, for the layers of ``shapes``."""
    from adapt_sd.checkpoint_names import ldm_module_names
    from adapters_core.models.bundled import load_config
    from adapters_core.ops.streaming import open_checkpoint

    reader = open_checkpoint(checkpoint)
    try:
        names = ldm_module_names(reader, load_config("sd_v1", "unet"), False)
        return {held[0]: (key, reader.shape(key)) for key, held in names.items() if held[0] in shapes}
    finally:
        reader.close()


INPUTS = ("base", "tuned", "lora1", "lora2", "lora64")


def write_inputs(work: Path) -> dict[str, tuple[str, torch.Size]]:
    """base.safetensors, tuned.safetensors (base + a decaying-spectrum difference on every U-Net
    LierLa layer), lora1/lora2 (rank 32) and lora64 (rank 64) files, unless ``work`` has them
    from an earlier run; returns the LierLa layers."""
    if all((work / f"{name}.safetensors").is_file() for name in INPUTS):
        return adapted_layers(work / "base.safetensors", lierla_shapes(bench_model("sd15")))
    from safetensors.torch import load_file, save_file

    from adapters_core.formats import save_adapter

    shapes = write_checkpoint(bench_model("sd15"), work / "base.safetensors")
    layers = adapted_layers(work / "base.safetensors", shapes)
    assert len(layers) == len(shapes), f"{len(layers)} of {len(shapes)} LierLa layers found in the file"
    tuned = load_file(str(work / "base.safetensors"))
    generator = torch.Generator().manual_seed(3)
    for name, (key, shape) in layers.items():
        if name.startswith("lora_unet_"):
            difference = synthetic_difference(shape, generator) * 50  # well above fp16 rounding
            tuned[key] = (tuned[key].float() + difference).half()
    save_file(tuned, str(work / "tuned.safetensors"))
    del tuned
    for name, seed, rank in (("lora1", 1, RANK), ("lora2", 2, RANK), ("lora64", 4, 2 * RANK)):
        save_adapter(work / f"{name}.safetensors", lora_tensors(shapes, seed, rank), dtype=torch.float16)
    return layers


# -- the exact answers and the errors ------------------------------------------------------------
def exact_delta(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``scale * up @ down`` of a kohya LoRA module in float64, as a matrix."""
    from adapters_core.ops.factors import factors_of

    factors = factors_of("lora", tensors)
    assert factors is not None
    up, down = factors.up.double(), factors.down.double()
    return factors.scale * up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)


def relative_error(pairs: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """sqrt(sum ||result - exact||^2 / sum ||exact||^2) over (result, exact) pairs."""
    error = norm = 0.0
    for result, exact in pairs:
        error += float(torch.linalg.vector_norm(result.double().flatten() - exact.flatten())) ** 2
        norm += float(torch.linalg.vector_norm(exact.flatten())) ** 2
    return (error / norm) ** 0.5


class Exact:
    """The exact answer of each tool, by module name (float64 matrices)."""

    def __init__(self, work: Path, layers: dict[str, tuple[str, torch.Size]]) -> None:
        from safetensors import safe_open

        from adapters_core.ops.deltas import read_adapters

        self.work, self.layers = work, layers
        self.loras = {n: read_adapters([work / f"{n}.safetensors"])[0].modules for n in ("lora1", "lora2", "lora64")}
        self._files = {n: safe_open(str(work / f"{n}.safetensors"), "pt") for n in ("base", "tuned")}

    def weight(self, file: str, name: str) -> torch.Tensor:
        key, shape = self.layers[name]
        return self._files[file].get_tensor(key).double().reshape(shape[0], -1)

    def merge_error(self, result: Path) -> float:
        """Merged weights against W + delta, relative to the deltas' size."""
        from safetensors import safe_open

        with safe_open(str(result), "pt") as merged:
            def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for name, tensors in self.loras["lora1"].items():
                    key, shape = self.layers[name]
                    base = self.weight("base", name)
                    yield merged.get_tensor(key).double().reshape(shape[0], -1) - base, exact_delta(tensors)

            return relative_error(pairs())

    def lora_error(self, result: Path, exact: Callable[[str], torch.Tensor], names: list[str]) -> float:
        from adapters_core.ops.deltas import read_adapters

        modules = read_adapters([result])[0].modules

        def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for name in names:
                target = exact(name)
                yield (exact_delta(modules[name]) if name in modules else torch.zeros_like(target)), target

        return relative_error(pairs())

    def svd_merge_error(self, result: Path) -> float:
        names = list(self.loras["lora1"])
        return self.lora_error(
            result, lambda n: exact_delta(self.loras["lora1"][n]) + exact_delta(self.loras["lora2"][n]), names
        )

    def resize_error(self, result: Path) -> float:
        return self.lora_error(result, lambda n: exact_delta(self.loras["lora64"][n]), list(self.loras["lora64"]))

    def extract_error(self, result: Path) -> float:
        names = [n for n in self.layers if n.startswith("lora_unet_")]
        return self.lora_error(result, lambda n: self.weight("tuned", n) - self.weight("base", n), names)


# -- the tools, as commands ----------------------------------------------------------------------
def commands(work: Path, out: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """tool -> (kohya script, its arguments, adapt's arguments), writing ``out/<tool>-<who>``."""
    w = {n: str(work / f"{n}.safetensors") for n in INPUTS}
    fp16 = ["--save_precision", "fp16"]

    def same(tool: str, script: str, args: list[str]) -> tuple[str, list[str], list[str]]:
        target = ["--save_to"]
        return (
            script,
            [*args, *fp16, *target, str(out / f"{tool}-kohya.safetensors")],
            [tool, *args, *fp16, *target, str(out / f"{tool}-adapt.safetensors")],
        )

    return {
        "merge": same("merge", "networks/merge_lora.py", ["--sd_model", w["base"], "--models", w["lora1"], "--ratios", "1.0"]),
        "svd-merge": same(
            "svd-merge",
            "networks/svd_merge_lora.py",
            ["--models", w["lora1"], w["lora2"], "--ratios", "1.0", "1.0", "--new_rank", str(RANK)],
        ),
        "extract": same(
            "extract",
            "networks/extract_lora_from_models.py",
            ["--model_org", w["base"], "--model_tuned", w["tuned"], "--dim", str(RANK), "--clamp_quantile", "0.99"],
        ),
        "resize": same("resize", "networks/resize_lora.py", ["--model", w["lora64"], "--new_rank", str(RANK)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-scripts", help="kohya sd-scripts checkout (default: $KOHYA_SD_SCRIPTS or bench/.kohya)")
    parser.add_argument(
        "--workdir", type=Path, help="inputs (about 7 GB), kept and reused from an earlier run (default: a temp dir)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each tool; the best counts")
    parser.add_argument("--tools", default="merge,svd-merge,extract,resize")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of both sides (default 1: shared machine)")
    args = parser.parse_args()
    if (found := kohya_or_skip(args.sd_scripts)) is None:
        return
    sd_scripts, python = found
    logging.disable(logging.WARNING)  # transformers/diffusers notes while the inputs are built
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["TQDM_DISABLE"] = "1"
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out = work / "out"
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        layers = write_inputs(work)
        print(f"inputs: {len(layers)} LierLa layers, built in {time.perf_counter() - started:.0f} s", flush=True)
        tools = {k: v for k, v in commands(work, out).items() if k in args.tools.split(",")}
        times: dict[str, dict[str, list[tuple[float, float]]]] = {t: {"kohya": [], "adapt": []} for t in tools}
        for repeat in range(args.repeats):
            for tool, (script, kohya_args, adapt_args) in tools.items():
                runs = {
                    "kohya": kohya_command(python, sd_scripts, script, *kohya_args),
                    "adapt": ([str(ADAPT), *adapt_args], dict(os.environ)),
                }
                for who in ("kohya", "adapt") if repeat % 2 == 0 else ("adapt", "kohya"):
                    (out / f"{tool}-{who}.safetensors").unlink(missing_ok=True)
                    times[tool][who].append(timed(*runs[who]))
                print(
                    f"repeat {repeat + 1} {tool}: kohya {times[tool]['kohya'][-1]}, adapt {times[tool]['adapt'][-1]} "
                    f"(wall s, CPU s); load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        exact = Exact(work, layers)
        measure = {
            "merge": exact.merge_error,
            "svd-merge": exact.svd_merge_error,
            "extract": exact.extract_error,
            "resize": exact.resize_error,
        }
        print(f"\n{'tool':<10} {'kohya wall/CPU s':>17} {'adapt wall/CPU s':>17} {'speedup wall/CPU':>17} "
              f"{'kohya error':>12} {'adapt error':>12}")
        for tool in tools:
            kohya_s = [min(t[i] for t in times[tool]["kohya"]) for i in (0, 1)]
            adapt_s = [min(t[i] for t in times[tool]["adapt"]) for i in (0, 1)]
            errors = [measure[tool](out / f"{tool}-{who}.safetensors") for who in ("kohya", "adapt")]
            print(
                f"{tool:<10} {kohya_s[0]:>8.1f}/{kohya_s[1]:<8.1f} {adapt_s[0]:>8.1f}/{adapt_s[1]:<8.1f} "
                f"{kohya_s[0] / adapt_s[0]:>7.2f}x/{kohya_s[1] / adapt_s[1]:.2f}x    {errors[0]:>12.4e} {errors[1]:>12.4e}",
                flush=True,
            )
            print(json.dumps({"tool": tool, "kohya": times[tool]["kohya"], "adapt": times[tool]["adapt"], "errors": errors}))


if __name__ == "__main__":
    main()
