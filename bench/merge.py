"""``adapt merge --sd_model`` against a plain safetensors copy of the same model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/merge.py [--workdir DIR] [--repeats 3] [--models sd15,sdxl]

On a checkpoint with random weights (bench/models.py: U-Net, text encoders and VAE, fp16, the
family's single-file layout; SD 1.5: LDM, 2.1 GB; SDXL: SGM, 6.9 GB) and rank-32 LoRA files on
the model's LierLa layers (264 on SD 1.5, 986 on SDXL), three cases: one adapter into the single file (the streamed path), two adapters at
once into the single file, and one adapter from a Diffusers folder of the same model into a
Diffusers folder. Each merge (``merge_into_model``, merge in float, saved in fp16) runs in a
fresh subprocess next to its peer, a plain ``load_file`` + ``save_file`` of the same files
(every ``.safetensors`` of the folder), interleaved, best of ``--repeats``, operation only
(imports excluded). Printed per case: the time ratio, the merge's peak RSS (VmHWM) over the
model's size, and a SHA-256 of the output's tensors (names, dtypes, shapes and bytes in name
order; not the metadata) that pins the output bit for bit across changes of the merge code,
and a spot check of sampled merged layers against ``W + alpha / rank * up @ down`` computed
here (float32, cast to fp16 as the merge saves).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from models import BenchModel, bench_model, write_checkpoint  # noqa: E402
from tools import peak_rss_bytes, write_loras  # noqa: E402


def model_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]


def tensor_digest(path: Path) -> str:
    """SHA-256 over every tensor of a file or folder (relative name, key, dtype, shape, bytes)."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    for file in model_files(path):
        with safe_open(str(file), "pt") as handle:
            for key in sorted(handle.keys()):
                tensor = handle.get_tensor(key).contiguous()
                name = file.relative_to(path) if path.is_dir() else ""
                digest.update(f"{name}:{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- children (fresh processes: their peak RSS is their own) -------------------------------------
def child_copy(source: str, target: str) -> dict[str, float]:
    from safetensors.torch import load_file, save_file

    start = time.perf_counter()
    if Path(source).is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    for file in model_files(Path(source)):
        out = Path(target) / file.relative_to(source) if Path(source).is_dir() else Path(target)
        save_file(load_file(str(file)), str(out))
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes()}


def child_merge(source: str, target: str, *loras: str) -> dict[str, float]:
    from adapters_core.models.loader import detect_family
    from adapters_core.ops.merge_model import merge_into_model

    detect_family(Path(source))  # start-up, not merging: the plugins load and the family's modules import
    before = peak_rss_bytes()
    start = time.perf_counter()
    merge_into_model(source, list(loras), [1.0] * len(loras), save_to=target, precision="float", save_precision="fp16")
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes(), "rss_after_imports": before}


def run_child(*args: str) -> dict[str, float]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def write_folder(checkpoint: Path, folder: Path) -> None:
    """The same model as a Diffusers folder (fp16; the tiny model's tokenizer: merge ignores it)."""
    from transformers import CLIPTokenizer

    from adapters_core.models import load_sd_model, save_diffusers
    from adapters_core.models.bundled import TINY_TOKENIZER_DIR

    model = load_sd_model(checkpoint, dtype=torch.float16, need_tokenizer=False)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    model.tokenizers.update(dict.fromkeys(model.family.text_encoder_names, tokenizer))
    save_diffusers(model, folder)


def spot_check(model: BenchModel, source: Path, merged: Path, loras: list[Path], every: int = 50) -> dict[str, object]:
    """Every ``every``-th adapted weight of a merged single file (and the first that holds
    several modules: SDXL's fused OpenCLIP q/k/v) against the base weight plus each adapter's
    ``alpha / rank * up @ down`` (ratio 1), in float32, cast to the file's dtype: the largest
    difference (0: bit identical) next to the largest change the adapters made there."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from adapters_core.ops.streaming import open_checkpoint

    adapters = [load_file(str(path)) for path in loras]
    reader = open_checkpoint(source)
    try:
        modules = model.family.checkpoint_module_keys(reader, False)
        held = {key: names for key, names in modules.items() if f"{names[0]}.alpha" in adapters[0]}
        ordered = sorted(held)
        keys = ordered[::every] + [key for key in ordered if len(held[key]) > 1][:1]
        worst = change = 0.0
        with safe_open(str(merged), "pt") as out:
            for key in keys:
                base = reader[key].float()
                expected = base.clone()
                for part, name in zip(expected.chunk(len(held[key])), held[key], strict=True):
                    for tensors in adapters:
                        up = tensors[f"{name}.lora_up.weight"].float().flatten(1)
                        down = tensors[f"{name}.lora_down.weight"].float().flatten(1)
                        scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
                        part += (scale * up @ down).reshape(part.shape)
                got = out.get_tensor(key)
                worst = max(worst, float((got.float() - expected.to(got.dtype).float()).abs().max()))
                change = max(change, float((expected - base).abs().max()))
    finally:
        reader.close()
    layers = sum(len(held[key]) for key in keys)
    return {"keys": len(keys), "modules": layers, "max_abs_diff": worst, "max_abs_change": change}


def bench_case(model: BenchModel, source: Path, target: Path, loras: list[Path], repeats: int) -> dict[str, object]:
    copies, merges = [], []
    check: dict[str, object] = {}
    for _ in range(repeats):
        copies.append(run_child("copy", str(source), str(target)))
        remove(target)
        merges.append(run_child("merge", str(source), str(target), *map(str, loras)))
        digest = tensor_digest(target)
        if target.is_file():
            check = spot_check(model, source, target, loras)
        remove(target)
    size = sum(f.stat().st_size for f in model_files(source))
    copy_s, merge_s = min(c["seconds"] for c in copies), min(m["seconds"] for m in merges)
    rss = min(m["peak_rss"] for m in merges)
    return {
        "model_gb": round(size / 1e9, 3),
        "copy_s": round(copy_s, 2),
        "merge_s": round(merge_s, 2),
        "time_ratio": round(merge_s / copy_s, 2),
        "merge_peak_rss_gb": round(rss / 1e9, 3),
        "rss_ratio": round(rss / size, 3),
        "rss_after_imports_gb": round(min(m["rss_after_imports"] for m in merges) / 1e9, 3),
        "copy_peak_rss_gb": round(min(c["peak_rss"] for c in copies) / 1e9, 3),
        "output_sha256": digest,
        "spot_check": check,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the model (about 9 GB in all).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each merge/copy child; the best counts.")
    parser.add_argument("--cases", default="single,two,folder", help="comma list of single, two, folder")
    parser.add_argument("--models", default="sd15", help="comma list of sd15 (2.1 GB), sdxl (6.9 GB)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared 2-core machine).")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the children
    if args.child:
        mode, *rest = args.child
        print(json.dumps(child_copy(*rest) if mode == "copy" else child_merge(*rest)))
        return
    for name in args.models.split(","):
        model = bench_model(name)
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            work = Path(tmp)
            start = time.perf_counter()
            checkpoint = work / f"{name}.safetensors"
            shapes = write_checkpoint(model, checkpoint)
            loras = write_loras(work, shapes, model)
            cases = {
                "single": (checkpoint, work / "merged.safetensors", loras[:1]),
                "two": (checkpoint, work / "merged.safetensors", loras),
                "folder": (work / name, work / "merged", loras[:1]),
            }
            if "folder" in args.cases:
                write_folder(checkpoint, work / name)
            print(
                f"{model.label}: {len(shapes)} LoRA modules, rank 32; built in {time.perf_counter() - start:.1f}s; "
                f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads",
                flush=True,
            )
            for case in args.cases.split(","):
                result = bench_case(model, *cases[case], args.repeats)
                print(f"merge {case}: {json.dumps(result)}; load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
