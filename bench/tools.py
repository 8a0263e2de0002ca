"""Benchmark of the adapter tools on an SD 1.5-sized U-Net and text encoder (random weights).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tools.py [--workdir DIR] [--repeats 3]

Prints, and records in docs/benchmarks.md by hand:

* merge into a checkpoint (rank-32 LoRA into a 2 GB fp16 single file, streamed): time as a
  ratio to a plain safetensors ``load_file`` + ``save_file`` of the same checkpoint, and the
  peak RSS of the merging process as a ratio to the checkpoint's size (both measured in
  subprocesses, best of ``--repeats``, operation only: imports excluded);
* svd-merge of two rank-32 adapters to rank 32: ``adapt svd-merge``'s factor method (QR of
  the stacked factors, SVD of the small core; file reading and writing included) against
  the full-delta SVD method (kohya's; SVD only), time ratio and relative Frobenius error;
* extract at dim 32: the randomized SVD (the default) against the exact SVD, time ratio and
  error relative to the exact truncation.

Timings use one torch thread by default (``--threads``): on a shared 2-core machine the
two-thread timings of small linear-algebra calls swing tenfold with the other processes'
load (OpenMP threads wait for a core), for our method and the reference alike.

The full SVD of every SD 1.5 layer takes many minutes on 2 cores, so the svd-merge and
extract comparisons run on one layer of each of the 18 distinct layer shapes of the U-Net
and text encoder, and totals are weighted by how many layers share each shape (264 layers).
The factor-method svd-merge also runs on the whole adapters (264 modules), for its real
total, compared with the weighted estimate of the reference on all 264 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

T = TypeVar("T")

RANK = 32
OURS_REPEATS = 3  # cheap: best of 3
REFERENCE_REPEATS = 1  # the full SVDs take minutes: one run (noise can only slow them)


def best_of(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """The shortest wall time of ``repeats`` runs (the machine is shared: noise only adds) and
    the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (VmHWM; ``ru_maxrss`` would include the
    parent's memory at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- children (run in fresh processes so their peak RSS is their own) -------------------------
def child_copy(source: str, target: str) -> dict[str, float]:
    from safetensors.torch import load_file, save_file

    start = time.perf_counter()
    save_file(load_file(source), target)
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes()}


def child_merge(source: str, lora: str, target: str) -> dict[str, float]:
    from adapters_core.ops.merge_model import merge_into_model

    before = peak_rss_bytes()
    start = time.perf_counter()
    merge_into_model(source, [lora], [1.0], save_to=target, precision="float", save_precision="fp16")
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes(), "rss_after_imports": before}


def run_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- inputs ---------------------------------------------------------------------------------------
def write_checkpoint(path: Path) -> dict[str, torch.Size]:
    """SD 1.5 U-Net + text encoder, random fp16 weights, LDM layout; returns the layer shapes."""
    from safetensors.torch import save_file

    from adapters_core.models import build_sd15_text_encoder, build_sd15_unet
    from adapters_core.models.ldm_layout import text_encoder_to_ldm, unet_to_ldm
    from adapters_core.ops.deltas import model_layer_shapes

    unet = build_sd15_unet("cpu", torch.float16)
    text_encoder = build_sd15_text_encoder("cpu", torch.float16)
    shapes = {
        name: shape
        for name, shape in model_layer_shapes(unet, text_encoder).items()
        if not (len(shape) == 4 and shape[2] != 1) and "resnets" not in name and "samplers" not in name
    }
    state = {**unet_to_ldm(unet.state_dict()), **text_encoder_to_ldm(text_encoder.state_dict(), v2=False)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return shapes


def lora_tensors(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        fan_in = torch.Size(shape[1:]).numel()
        tensors[f"{name}.lora_down.weight"] = torch.randn(RANK, *shape[1:], generator=generator) / fan_in**0.5
        up = (shape[0], RANK, 1, 1) if len(shape) == 4 else (shape[0], RANK)
        tensors[f"{name}.lora_up.weight"] = torch.randn(*up, generator=generator) * 0.01
        tensors[f"{name}.alpha"] = torch.tensor(float(RANK // 2))
    return tensors


def representatives(shapes: dict[str, torch.Size]) -> tuple[list[str], Counter[torch.Size]]:
    """One layer name per distinct shape, and how many layers have each shape."""
    counts = Counter(shapes.values())
    first: dict[torch.Size, str] = {}
    for name, shape in shapes.items():
        first.setdefault(shape, name)
    return list(first.values()), counts


# -- sections -------------------------------------------------------------------------------------
def bench_merge(work: Path, repeats: int) -> dict[str, float]:
    checkpoint, lora = work / "sd15.safetensors", work / "lora32.safetensors"
    size = checkpoint.stat().st_size
    copies, merges = [], []
    for i in range(repeats):
        copies.append(run_child("copy", str(checkpoint), str(work / f"copy{i}.safetensors")))
        (work / f"copy{i}.safetensors").unlink()
        merges.append(run_child("merge", str(checkpoint), str(lora), str(work / f"merged{i}.safetensors")))
        (work / f"merged{i}.safetensors").unlink()
    copy_s = min(c["seconds"] for c in copies)
    merge_s = min(m["seconds"] for m in merges)
    rss = min(m["peak_rss"] for m in merges)
    return {
        "checkpoint_gb": size / 1e9,
        "copy_s": copy_s,
        "merge_s": merge_s,
        "time_ratio": merge_s / copy_s,
        "merge_peak_rss_gb": rss / 1e9,
        "rss_ratio": rss / size,
        "rss_after_imports_gb": min(m["rss_after_imports"] for m in merges) / 1e9,
        "copy_peak_rss_gb": min(c["peak_rss"] for c in copies) / 1e9,
    }


def full_delta_svd(ups: list[torch.Tensor], downs: list[torch.Tensor], rank: int) -> torch.Tensor:
    """The reference method (kohya's svd_merge): form the summed delta, full SVD, truncate."""
    total = sum(u @ d for u, d in zip(ups, downs, strict=True))
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def bench_svd_merge(work: Path, shapes: dict[str, torch.Size], files: list[Path]) -> dict[str, float]:
    from adapters_core.formats import save_adapter
    from adapters_core.ops.deltas import read_adapters
    from adapters_core.ops.factors import factors_of
    from adapters_core.ops.svd_merge import svd_merge

    whole, _ = best_of(
        OURS_REPEATS, lambda: svd_merge(files, save_to=work / "svd_all.safetensors", new_rank=RANK, overwrite=True)
    )
    names, counts = representatives(shapes)
    subset = []
    for i, path in enumerate(files):
        tensors = read_adapters([path])[0].modules
        subset.append(work / f"subset{i}.safetensors")
        flat = {f"{n}.{k}": v for n in names for k, v in tensors[n].items()}
        save_adapter(subset[-1], flat, overwrite=True)
    sample, _ = best_of(
        OURS_REPEATS, lambda: svd_merge(subset, save_to=work / "svd_subset.safetensors", new_rank=RANK, overwrite=True)
    )
    result = read_adapters([work / "svd_all.safetensors"])[0].modules
    adapters = read_adapters(files)
    reference: dict[str, float] = {}
    err_ours = err_ref = norm = 0.0
    for name in names:
        factors = [factors_of("lora", a.modules[name]) for a in adapters]
        ups = [f.scale * f.up for f in factors if f is not None]
        downs = [f.down for f in factors if f is not None]
        exact = sum(u.double() @ d.double() for u, d in zip(ups, downs, strict=True))
        reference[name], approx_ref = best_of(REFERENCE_REPEATS, lambda u=ups, d=downs: full_delta_svd(u, d, RANK))
        mine = factors_of("lora", result[name])
        assert mine is not None
        approx_ours = mine.scale * mine.up.double() @ mine.down.double()
        weight = counts[shapes[name]]
        err_ours += weight * float(torch.linalg.matrix_norm(exact - approx_ours)) ** 2
        err_ref += weight * float(torch.linalg.matrix_norm(exact - approx_ref.double())) ** 2
        norm += weight * float(torch.linalg.matrix_norm(exact)) ** 2
    weighted_ref = sum(reference[n] * counts[shapes[n]] for n in names)
    return {
        "modules_whole": len(shapes),
        "ours_whole_s": whole,
        "reference_whole_estimate_s": weighted_ref,
        "speedup_whole": weighted_ref / whole,
        "ours_sample_s": sample,
        "reference_sample_s": sum(reference.values()),
        "speedup_sample": sum(reference.values()) / sample,
        "rel_error_ours": (err_ours / norm) ** 0.5,
        "rel_error_reference": (err_ref / norm) ** 0.5,
    }


def synthetic_difference(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A fine-tuning-like weight difference: singular values decaying as i^-0.5, plus noise."""
    out, n = shape[0], torch.Size(shape[1:]).numel()
    m = min(out, n)
    spectrum = torch.arange(1, m + 1, dtype=torch.float32) ** -0.5
    left = torch.randn(out, m, generator=generator) / out**0.5
    right = torch.randn(m, n, generator=generator) / n**0.5
    noise = torch.randn(out, n, generator=generator) * 1e-3 / m**0.5
    return ((left * spectrum) @ right + noise).reshape(shape) * 1e-2


def bench_extract(shapes: dict[str, torch.Size]) -> dict[str, float]:
    from adapters_core.ops.deltas import extract_module, module_delta

    names, counts = representatives(shapes)
    generator = torch.Generator().manual_seed(0)
    times = {"exact": 0.0, "randomized": 0.0}
    errors = {"exact": 0.0, "randomized": 0.0}
    worst = 0.0
    for name in names:
        shape = shapes[name]
        diff = synthetic_difference(shape, generator)
        per_method = {}
        for method, repeats in (("exact", REFERENCE_REPEATS), ("randomized", OURS_REPEATS)):
            options = {"svd": method, "clamp_quantile": None}
            seconds, tensors = best_of(repeats, lambda d=diff, o=options: extract_module("lora", d, RANK, o))
            times[method] += seconds * counts[shape]
            per_method[method] = float(torch.linalg.vector_norm(module_delta("lora", tensors, shape) - diff))
            errors[method] += counts[shape] * per_method[method] ** 2
        worst = max(worst, per_method["randomized"] / per_method["exact"])
    return {
        "exact_weighted_s": times["exact"],
        "randomized_weighted_s": times["randomized"],
        "speedup": times["exact"] / times["randomized"],
        "error_ratio": (errors["randomized"] / errors["exact"]) ** 0.5,
        "worst_module_error_ratio": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where to write the 2 GB checkpoint (default: a temp dir)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each merge/copy child; the best counts.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two-thread timings swing tenfold).",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the children
    if args.child:
        mode, *rest = args.child
        print(json.dumps(child_copy(*rest) if mode == "copy" else child_merge(*rest)))
        return
    from adapters_core.formats import save_adapter

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        shapes = write_checkpoint(work / "sd15.safetensors")
        files = []
        for seed in (1, 2):
            files.append(work / f"lora{seed}.safetensors")
            save_adapter(files[-1], lora_tensors(shapes, seed), dtype=torch.float16)
        (work / "lora32.safetensors").write_bytes(files[0].read_bytes())
        print(
            f"inputs: {len(shapes)} LoRA modules, rank {RANK}; built in {time.perf_counter() - start:.1f}s; "
            f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads",
            flush=True,
        )
        merge = bench_merge(work, args.repeats)
        print("merge into checkpoint:", json.dumps({k: round(v, 3) for k, v in merge.items()}), flush=True)
        svd = bench_svd_merge(work, shapes, files)
        print("svd-merge 2 x rank 32 -> 32:", json.dumps({k: round(v, 5) for k, v in svd.items()}), flush=True)
        extract = bench_extract(shapes)
        print("extract dim 32:", json.dumps({k: round(v, 5) for k, v in extract.items()}), flush=True)


if __name__ == "__main__":
    main()
