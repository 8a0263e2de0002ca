"""Bit-identity check of adapt's SD 1.x/2.x outputs across a refactor (a manual check, not a CI test).

It writes the tiny model (a Diffusers folder, a single file, and a second "fine-tuned" copy with
another seed) and a tiny dataset into a temporary folder, runs a fixed list of ``adapt`` commands
there (train, merge, svd-merge, extract, resize, convert, generate, grid) on the CPU with one
thread and fixed seeds, and hashes every output:

- ``.safetensors``: the tensors (sorted keys, dtype, shape, bytes) and, separately, the metadata
  without the fields that change from run to run (``VOLATILE_METADATA``);
- ``.png``: the decoded pixels (mode, size, bytes) plus the text chunks (e.g. ``parameters``);
- any other file: its bytes (text files with the temporary folder's path replaced);
- folders: every file in them, by relative path.

Usage (from the repository root, with the environment's adapt installed; takes a few minutes):

    .venv/bin/python scripts/bitcheck.py --out /tmp/bitcheck-new.json \
        --compare scripts/bitcheck-baseline.json

``scripts/bitcheck-baseline.json`` was written at commit 130d31d (before the "house before SDXL"
refactor, issue 9). Run the line above at the new commit: it prints one OK/DIFF row per output and
exits 1 if any output differs (or is missing, or is new), 0 if all are bit-identical. Without
``--compare`` it only writes ``--out``. ``--keep DIR`` keeps the work folder for inspection.

Floating-point results depend on the CPU and on the torch/diffusers versions: compare on the
machine and environment that wrote the baseline (this project's .venv, torch's CPU kernels, one
thread). Elsewhere, first write a fresh baseline with the old commit's adapt installed: run this
script with that environment's Python (it runs the ``adapt`` next to ``sys.executable``).

The commands are run through the ``adapt`` console script of the running Python's environment
with only documented flags, so the check does not depend on the package's internal layout; only
the setup imports ``adapters_core.models.write_tiny_model`` and
``adapters_core.train.dataset.write_demo_dataset``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

# Metadata fields that differ between two runs of the same commit on the same inputs.
VOLATILE_METADATA = frozenset({
    "ss_training_started_at",
    "ss_training_finished_at",
    "modelspec.date",
    "ss_session_id",
})
ROOT_TOKEN = "<ROOT>"
# The time stamp in the names of training sample images (adapter_000002_00_20261129180557_1.png).
TIMESTAMP_IN_NAME = re.compile(r"_\d{14}(?=[_.])")

PROMPT = "sks shape, red circle"
IMAGE = ["--W", "32", "--H", "32", "--steps", "4", "--seed", "7", "--device", "cpu"]


def train_args(output: str, model: str, *extra: str) -> list[str]:
    """A short training run on the tiny model: 32 px, batch 2, 4 steps, seed 42, no workers."""
    return [
        "train", "--pretrained_model_name_or_path", model, "--train_data_dir", "data/img",
        "--caption_extension", ".txt", "--resolution", "32", "--train_batch_size", "2",
        "--output_dir", output, "--output_name", "adapter", "--max_train_steps", "4",
        "--learning_rate", "1e-3", "--seed", "42", "--max_data_loader_n_workers", "0", *extra,
    ]


# (label, adapt arguments, outputs relative to the work folder), run in this order.
COMMANDS: list[tuple[str, list[str], list[str]]] = [
    ("train-lora", train_args(
        "train/lora", "model", "--network_dim", "4", "--network_alpha", "2", "--save_every_n_steps", "2",
        "--sample_prompts", "prompts.txt", "--sample_every_n_steps", "2", "--sample_at_first",
    ), ["train/lora"]),
    ("train-lora-single-file", train_args(
        "train/lora2", "tiny.safetensors", "--network_dim", "4", "--network_alpha", "4", "--cache_latents",
        "--network_train_unet_only", "--no_report_images",
    ), ["train/lora2"]),
    ("train-c3lier", train_args(
        "train/c3lier", "model", "--network", "c3lier", "--network_dim", "4", "--network_alpha", "2",
        "--network_args", "conv_dim=2", "conv_alpha=1", "--no_report_images",
    ), ["train/c3lier"]),
    ("train-lora-conv_dim", train_args(
        "train/lora-conv", "model", "--network_dim", "4", "--network_args", "conv_dim=2", "--no_report_images",
    ), ["train/lora-conv"]),
    ("train-dylora", train_args(
        "train/dylora", "model", "--network", "dylora", "--network_dim", "4", "--network_alpha", "4",
        "--network_args", "unit=2", "--no_report_images",
    ), ["train/dylora"]),
    ("train-v-parameterization", train_args(
        "train/vpred", "model", "--v_parameterization", "--network_dim", "4", "--zero_terminal_snr",
        "--min_snr_gamma", "5", "--scale_v_pred_loss_like_noise_pred", "--noise_offset", "0.05",
        "--save_precision", "fp16", "--no_report_images",
    ), ["train/vpred"]),
    ("merge-adapters", [
        "merge", "--models", "train/lora/adapter.safetensors", "train/lora2/adapter.safetensors",
        "--ratios", "0.7", "0.4", "--save_to", "out/merged-adapter.safetensors",
    ], ["out/merged-adapter.safetensors"]),
    ("merge-adapters-concat", [
        "merge", "--models", "train/lora/adapter.safetensors", "train/c3lier/adapter.safetensors",
        "--ratios", "1", "-0.5", "--concat", "--save_to", "out/merged-concat.safetensors",
    ], ["out/merged-concat.safetensors"]),
    ("merge-into-single-file", [
        "merge", "--sd_model", "tiny.safetensors", "--models", "train/lora/adapter.safetensors",
        "train/c3lier/adapter.safetensors", "--ratios", "1", "0.5", "--save_to", "out/merged-model.safetensors",
    ], ["out/merged-model.safetensors"]),
    ("merge-into-diffusers", [
        "merge", "--sd_model", "model", "--models", "train/lora-conv/adapter.safetensors",
        "--block_weights", "ALL0.5", "--save_precision", "fp16", "--save_to", "out/merged-diffusers",
    ], ["out/merged-diffusers"]),
    ("svd-merge", [
        "svd-merge", "--models", "train/lora/adapter.safetensors", "train/c3lier/adapter.safetensors",
        "--ratios", "0.6", "0.4", "--new_rank", "4", "--new_conv_rank", "2", "--save_to", "out/svd-merged.safetensors",
    ], ["out/svd-merged.safetensors"]),
    ("extract-exact", [
        "extract", "--model_org", "tiny.safetensors", "--model_tuned", "out/merged-model.safetensors",
        "--dim", "4", "--conv_dim", "2", "--svd", "exact", "--save_to", "out/extracted-exact.safetensors",
    ], ["out/extracted-exact.safetensors"]),
    ("extract-randomized", [
        "extract", "--model_org", "model", "--model_tuned", "finetune", "--dim", "4",
        "--save_to", "out/extracted-randomized.safetensors",
    ], ["out/extracted-randomized.safetensors"]),
    ("extract-from-dylora", [
        "extract", "--from_dylora", "train/dylora/adapter.safetensors", "--unit", "2",
        "--save_to", "out/from-dylora.safetensors",
    ], ["out"]),  # the split's file names are the command's choice: hash the whole folder afterwards
    ("resize", [
        "resize", "--model", "train/c3lier/adapter.safetensors", "--new_rank", "2", "--new_conv_rank", "1",
        "--save_to", "out/resized.safetensors",
    ], ["out/resized.safetensors"]),
    ("resize-dynamic", [
        "resize", "--model", "train/lora/adapter.safetensors", "--new_rank", "4", "--dynamic_method", "sv_fro",
        "--dynamic_param", "0.9", "--save_precision", "fp16", "--save_to", "out/resized-dynamic.safetensors",
    ], ["out/resized-dynamic.safetensors"]),
    ("convert-diffusers", [
        "convert", "train/lora/adapter.safetensors", "out/converted-diffusers.safetensors", "--to", "diffusers",
    ], ["out/converted-diffusers.safetensors"]),
    ("convert-peft", [
        "convert", "train/c3lier/adapter.safetensors", "out/converted-peft", "--to", "peft",
    ], ["out/converted-peft"]),
    ("convert-back-to-kohya", [
        "convert", "out/converted-diffusers.safetensors", "out/converted-kohya.safetensors", "--to", "kohya",
    ], ["out/converted-kohya.safetensors"]),
    ("generate-diffusers", [
        "generate", "--model", "model", "--network_weights", "train/lora/adapter.safetensors",
        "train/c3lier/adapter.safetensors", "--network_mul", "1", "0.5", "--prompt", PROMPT, *IMAGE,
        "--outdir", "gen/diffusers",
    ], ["gen/diffusers"]),
    ("generate-single-file-merged", [
        "generate", "--model", "tiny.safetensors", "--network_weights", "train/dylora/adapter.safetensors",
        "--merge", "--sampler", "euler_a", "--negative_prompt", "blue", "--prompt", PROMPT, *IMAGE,
        "--outdir", "gen/single",
    ], ["gen/single"]),
    ("generate-v-parameterization", [
        "generate", "--model", "model", "--v_parameterization", "--network_weights",
        "train/vpred/adapter.safetensors", "--prompt", PROMPT, *IMAGE, "--outdir", "gen/vpred",
    ], ["gen/vpred"]),
    ("grid", [
        "grid", "--model", "model", "--network_weights", "train/lora/adapter.safetensors", "--prompt", PROMPT,
        "--x", "mul=0,1", "--y", "seed=1,2", "--W", "32", "--H", "32", "--steps", "3", "--device", "cpu",
        "--outdir", "gen/grid",
    ], ["gen/grid"]),
]


def setup(root: Path) -> None:
    """The inputs: the tiny model (folder + single file), a fine-tuned copy, the dataset, prompts."""
    from adapters_core.models import write_tiny_model
    from adapters_core.train.dataset import write_demo_dataset

    write_tiny_model(root / "model", seed=0, single_file=root / "tiny.safetensors")
    write_tiny_model(root / "finetune", seed=1)
    write_demo_dataset(root / "data", n_images=4, size=32, seed=0)
    (root / "prompts.txt").write_text(f"{PROMPT} --w 32 --h 32 --s 3 --d 1\n", encoding="utf-8")


def adapt_command() -> list[str]:
    """The ``adapt`` console script installed next to the running Python."""
    script = Path(sys.executable).parent / "adapt"
    found = str(script) if script.is_file() else shutil.which("adapt")
    if found is None:
        sys.exit("bitcheck: no `adapt` console script next to this Python or on PATH")
    return [found]


def run_env() -> dict[str, str]:
    """Offline, CPU only, one thread, fixed hash seed."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _normalize(text: str, root: Path) -> str:
    return text.replace(str(root.resolve()), ROOT_TOKEN).replace(str(root), ROOT_TOKEN)


def hash_safetensors(path: Path, root: Path) -> dict[str, str]:
    """Hashes of the tensors and of the stable metadata, read from the safetensors header."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = hashlib.sha256()
    for key in sorted(header):
        info = header[key]
        start, end = info["data_offsets"]
        tensors.update(_sha(key.encode(), info["dtype"].encode(), json.dumps(info["shape"]).encode(), body[start:end])
                       .encode())
    stable = {k: _normalize(v, root) for k, v in metadata.items() if k not in VOLATILE_METADATA}
    return {"tensors": tensors.hexdigest(), "metadata": _sha(json.dumps(stable, sort_keys=True).encode())}


def hash_png(path: Path, root: Path) -> dict[str, str]:
    """Hashes of the decoded pixels and of the text chunks."""
    with Image.open(path) as image:
        image.load()
        pixels = _sha(image.mode.encode(), json.dumps(image.size).encode(), image.tobytes())
        text = {k: _normalize(str(v), root) for k, v in getattr(image, "text", {}).items()}
    return {"pixels": pixels, "text": _sha(json.dumps(text, sort_keys=True).encode())}


def hash_other(path: Path, root: Path) -> dict[str, str]:
    data = path.read_bytes()
    try:
        data = _normalize(data.decode("utf-8"), root).encode()
    except UnicodeDecodeError:
        pass
    return {"bytes": _sha(data)}


def hash_file(path: Path, root: Path) -> dict[str, str]:
    if path.suffix == ".safetensors":
        return hash_safetensors(path, root)
    if path.suffix == ".png":
        return hash_png(path, root)
    return hash_other(path, root)


def hash_output(target: Path, root: Path, seen: set[Path]) -> dict[str, str]:
    """``{'<relative path> [<part>]': hash}`` of a file, or of every file in a folder not hashed yet."""
    if not target.exists():
        return {f"{target.relative_to(root).as_posix()} [missing]": "missing"}
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    result: dict[str, str] = {}
    for file in files:
        if file in seen:
            continue
        seen.add(file)
        for part, digest in hash_file(file, root).items():
            name = TIMESTAMP_IN_NAME.sub("_<time>", file.relative_to(root).as_posix())
            result[f"{name} [{part}]"] = digest
    return result


def run_all(root: Path, log: Path) -> dict[str, dict[str, str]]:
    root.mkdir(parents=True)
    setup(root)
    seen: set[Path] = set()
    hashes: dict[str, dict[str, str]] = {"setup": {}}
    for name in ("model", "tiny.safetensors", "finetune", "data", "prompts.txt"):
        hashes["setup"].update(hash_output(root / name, root, seen))
    adapt, env = adapt_command(), run_env()
    with log.open("w", encoding="utf-8") as out:
        for label, args, outputs in COMMANDS:
            started = time.perf_counter()
            out.write(f"\n$ adapt {' '.join(args)}\n")
            out.flush()
            code = subprocess.run([*adapt, *args], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            print(f"{label:32s} exit {code}  {time.perf_counter() - started:5.1f} s", flush=True)
            if code != 0:
                print(f"bitcheck: {label} failed; the end of its output:\n" + log.read_text(encoding="utf-8")[-3000:])
                hashes[label] = {"exit code": str(code)}
                continue
            hashes[label] = {}
            for output in outputs:
                hashes[label].update(hash_output(root / output, root, seen))
    return hashes


def compare(new: dict[str, dict[str, str]], baseline: dict[str, dict[str, str]]) -> int:
    """Print one OK/DIFF row per output; the number of differences."""
    rows: list[tuple[str, str, str]] = []
    for label in list(baseline) + [k for k in new if k not in baseline]:
        old_files, new_files = baseline.get(label, {}), new.get(label, {})
        for file in list(old_files) + [k for k in new_files if k not in old_files]:
            if file not in new_files:
                status = "MISSING"
            elif file not in old_files:
                status = "NEW"
            else:
                status = "OK" if old_files[file] == new_files[file] else "DIFF"
            rows.append((status, label, file))
    width = max((len(label) for _, label, _ in rows), default=10)
    for status, label, file in rows:
        print(f"{status:8s} {label:{width}s} {file}")
    differences = sum(status != "OK" for status, _, _ in rows)
    print(f"bitcheck: {len(rows) - differences} of {len(rows)} outputs identical, {differences} differ")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of {command: {output: hash}}")
    parser.add_argument("--compare", type=Path, help="baseline JSON: print OK/DIFF per output, exit 1 on any DIFF")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, with the log")
    args = parser.parse_args()
    baseline = json.loads(args.compare.read_text(encoding="utf-8")) if args.compare else None
    started = time.perf_counter()
    if args.keep:
        if args.keep.exists():
            parser.error(f"--keep {args.keep}: the folder exists; name a new one")
        hashes = run_all(args.keep, args.keep / "bitcheck.log")
    else:
        with tempfile.TemporaryDirectory(prefix="bitcheck-") as work:
            hashes = run_all(Path(work) / "w", Path(work) / "bitcheck.log")
    args.out.write_text(json.dumps(hashes, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"bitcheck: wrote {args.out} ({sum(map(len, hashes.values()))} hashes) in {time.perf_counter() - started:.0f} s")
    if baseline is None:
        return 0
    return 1 if compare(hashes, baseline) else 0


if __name__ == "__main__":
    sys.exit(main())
