"""Benchmark of the adapter tools' methods on a model's LierLa layer shapes (random weights).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tools.py [--workdir DIR] [--models sd15,sdxl]

Prints, and records in docs/benchmarks.md by hand (merging into a checkpoint: bench/merge.py;
the tools side by side with kohya's scripts: bench/kohya_tools.py):

* svd-merge of two rank-32 adapters to rank 32: ``adapt svd-merge``'s factor method (QR of
  the stacked factors, SVD of the small core; file reading and writing included) against
  the full-delta SVD method (kohya's; SVD only), time ratio and relative Frobenius error;
* extract at dim 32: the randomized SVD (the default) against the exact SVD, time ratio and
  error relative to the exact truncation.

Timings use one torch thread by default (``--threads``): on a shared 2-core machine the
two-thread timings of small linear-algebra calls swing tenfold with the other processes'
load (OpenMP threads wait for a core), for our method and the reference alike.

The layers are adapt's LierLa set of the model (bench/models.py; SD 1.5: 264 layers of 18
distinct shapes, SDXL: 986 layers of 12 shapes). The full SVD of every layer takes many
minutes on 2 cores, so the svd-merge and extract comparisons run on one layer of each
distinct shape, and totals are weighted by how many layers share each shape. The
factor-method svd-merge also runs on the whole adapters, for its real total, compared with
the weighted estimate of the reference on all layers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from models import BenchModel, bench_model, lierla_shapes  # noqa: E402

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


# -- inputs ---------------------------------------------------------------------------------------
def lora_tensors(shapes: dict[str, torch.Size], seed: int, rank: int = RANK) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        fan_in = torch.Size(shape[1:]).numel()
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, *shape[1:], generator=generator) / fan_in**0.5
        up = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
        tensors[f"{name}.lora_up.weight"] = torch.randn(*up, generator=generator) * 0.01
        tensors[f"{name}.alpha"] = torch.tensor(float(rank // 2))
    return tensors


def write_loras(
    work: Path, shapes: dict[str, torch.Size], model: BenchModel, seeds: tuple[int, ...] = (1, 2)
) -> list[Path]:
    """``lora<seed>.safetensors`` files of rank 32 (fp16) on the layers of ``shapes``, with the
    model's ``ss_base_model_version`` as kohya writes it (an SDXL file without it is read as
    SD 1.x by svd-merge: see docs/benchmarks.md, SDXL)."""
    from adapters_core.formats import save_adapter

    metadata = {"ss_base_model_version": model.family.base_model_version(False)}
    files = [work / f"lora{seed}.safetensors" for seed in seeds]
    for seed, path in zip(seeds, files, strict=True):
        save_adapter(path, lora_tensors(shapes, seed), metadata=metadata, dtype=torch.float16)
    return files


def representatives(shapes: dict[str, torch.Size]) -> tuple[list[str], Counter[torch.Size]]:
    """One layer name per distinct shape, and how many layers have each shape."""
    counts = Counter(shapes.values())
    first: dict[torch.Size, str] = {}
    for name, shape in shapes.items():
        first.setdefault(shape, name)
    return list(first.values()), counts


# -- sections -------------------------------------------------------------------------------------
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
        reference[name], approx_ref = best_of(REFERENCE_REPEATS, partial(full_delta_svd, ups, downs, RANK))
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
            seconds, tensors = best_of(repeats, partial(extract_module, "lora", diff, RANK, options))
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
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the adapters (default: a temp dir).")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two-thread timings swing tenfold).",
    )
    parser.add_argument("--models", default="sd15", help="comma list of sd15, sdxl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        model = bench_model(name)
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            work = Path(tmp)
            start = time.perf_counter()
            shapes = lierla_shapes(model)  # on "meta": shapes only
            files = write_loras(work, shapes, model)
            print(
                f"{model.label}: {len(shapes)} LoRA modules, rank {RANK}; built in {time.perf_counter() - start:.1f}s; "
                f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads",
                flush=True,
            )
            svd = bench_svd_merge(work, shapes, files)
            print("svd-merge 2 x rank 32 -> 32:", json.dumps({k: round(v, 5) for k, v in svd.items()}), flush=True)
            extract = bench_extract(shapes)
            print("extract dim 32:", json.dumps({k: round(v, 5) for k, v in extract.items()}), flush=True)


if __name__ == "__main__":
    main()
