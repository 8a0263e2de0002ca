"""``adapt quickstart``: train a LoRA on the bundled tiny model and demo data, offline, in seconds.

Writes ``<work>/model`` (the tiny SD1-style model, a Diffusers folder; with ``model_family``
another family's demo model, such as the tiny SDXL-shaped ``tiny_sdxl``), ``<work>/data`` (the
demo DreamBooth dataset and sample prompts) and ``<work>/output/quickstart.safetensors`` with
checkpoints at each third of the run and the training report (sample grids, contact sheet,
loss plot), then reports the denoising loss of the model on the training images without and
with the LoRA and draws ``adapt grid``'s checkpoints-by-multiplier grid into ``<work>/output/grid``.

It runs on one torch thread: the tiny model's operations are too small for a second thread to
gain much (about 20%), and a single thread keeps the run at seconds when another job shares
a 2-core machine, where two threads, each waiting for the other at every operation, were
measured 30x slower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError
from adapters_core.family import ModelFamily
from adapters_core.generate.grid import Axis, GridRequest, make_grid
from adapters_core.generate.images import GenerationSettings
from adapters_core.generate.prompts import PromptJob
from adapters_core.models import SDModel, load_sd_model
from adapters_core.models.loader import detect_family
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.train.args import TrainArgs
from adapters_core.train.components import build_dataset
from adapters_core.train.dataset import write_demo_dataset
from adapters_core.train.dataset.demo import CLASS_FOLDER
from adapters_core.train.evaluation import denoising_loss
from adapters_core.train.loop import train

QUICKSTART_STEPS = 120
QUICKSTART_LEARNING_RATE = 2e-3
IMAGE_SIZE = 32
SAMPLE_PROMPTS = ("sks shape, red circle", "sks shape, blue square", "sks shape, green circle")
SAMPLE_STEPS = 8
GRID_MULTIPLIERS = (0.0, 0.5, 1.0)


@dataclass
class QuickstartResult:
    adapter: Path
    steps: int
    seconds: float
    loss_before: float
    loss_after: float
    grid: Path
    report: list[Path]


def quickstart_args(
    work_dir: Path,
    *,
    steps: int = QUICKSTART_STEPS,
    seed: int = 0,
    overwrite: bool = False,
    learning_rate: float = QUICKSTART_LEARNING_RATE,
) -> TrainArgs:
    """The training arguments of the quickstart (also a worked example of the flags)."""
    third = max(1, steps // 3)
    return TrainArgs(
        pretrained_model_name_or_path=str(work_dir / "model"),
        train_data_dir=str(work_dir / "data" / "img"),
        caption_extension=".txt",
        resolution=str(IMAGE_SIZE),
        train_batch_size=4,
        output_dir=str(work_dir / "output"),
        output_name="quickstart",
        network_dim=8,
        network_alpha=8,
        learning_rate=learning_rate,
        max_train_steps=steps,
        seed=seed,
        cache_latents=True,
        max_data_loader_n_workers=0,
        save_every_n_steps=third,
        sample_prompts=str(work_dir / "data" / "prompts.txt"),
        sample_every_n_steps=third,
        sample_at_first=True,
        overwrite=overwrite,
    )


DEMO_IMAGES = 8


def _model_complete(folder: Path) -> bool:
    return all((folder / part).is_file() for part in ("model_index.json", "unet/config.json", "vae/config.json"))


def _dataset_complete(folder: Path) -> bool:
    images = folder / "img" / CLASS_FOLDER
    return all(
        (images / f"{i:03d}.png").is_file() and (images / f"{i:03d}.txt").is_file() for i in range(DEMO_IMAGES)
    )


def demo_family(name: str) -> ModelFamily:
    """The installed model family ``name``, which must have a demo model."""
    family = get_registry().family(name)  # an unknown name is its own error
    if not family.has_demo_model:
        names = ", ".join(f.name for f in get_registry().families.values() if f.has_demo_model)
        raise ConfigError(f"--model_family {name}: this family has no demo model to train on; choose one of {names}")
    return family


def prepare_workspace(work_dir: Path, family: ModelFamily | None = None, *, overwrite: bool = False) -> None:
    """Write the demo model of ``family`` (default: the tiny SD 1.x-style one), the demo data
    and the sample prompts unless they are there (all deterministic).

    Each is built under a temporary name and renamed into place when complete; one left
    incomplete by an older version or by hand is rebuilt, so training never sees part of it.
    A complete model of another family is replaced only with ``overwrite``.
    """
    family = family or demo_family("tiny")
    model, data = work_dir / "model", work_dir / "data"
    if _model_complete(model):
        found = detect_family(model)
        if found.name != family.name:
            if not overwrite:
                raise ConfigError(
                    f"--output_dir {work_dir}: {model} holds a {found.name} model, not {family.name}; "
                    "choose another --output_dir or pass --overwrite"
                )
            family.write_demo_model(model, seed=0)  # written atomically
    else:
        family.write_demo_model(model, seed=0)
    if not _dataset_complete(data):
        with atomic_path(data, overwrite=True) as tmp:
            write_demo_dataset(tmp, n_images=DEMO_IMAGES, size=IMAGE_SIZE, seed=0)
    prompts = data / "prompts.txt"
    if not prompts.is_file():
        size = f"--w {IMAGE_SIZE} --h {IMAGE_SIZE} --s {SAMPLE_STEPS}"
        with atomic_path(prompts) as tmp:
            tmp.write_text("".join(f"{p} {size} --d {i + 1}\n" for i, p in enumerate(SAMPLE_PROMPTS)), encoding="utf-8")


def run_quickstart(
    work_dir: str | Path,
    *,
    steps: int = QUICKSTART_STEPS,
    seed: int = 0,
    overwrite: bool = False,
    show_progress: bool = True,
    threads: int = 1,
    model_family: str = "tiny",
    learning_rate: float = QUICKSTART_LEARNING_RATE,
) -> QuickstartResult:
    """Train and evaluate on ``threads`` torch threads (the caller's setting is restored) on
    the demo model of ``model_family``."""
    family = demo_family(model_family)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = quickstart_args(Path(work_dir), steps=steps, seed=seed, overwrite=overwrite, learning_rate=learning_rate)
        return _run(Path(work_dir), family, args, show_progress)
    finally:
        torch.set_num_threads(previous)


def _run(work: Path, family: ModelFamily, args: TrainArgs, show_progress: bool) -> QuickstartResult:
    prepare_workspace(work, family, overwrite=args.overwrite)
    seed = args.seed or 0
    started = time.perf_counter()
    result = train(args, show_progress=show_progress)
    seconds = time.perf_counter() - started
    model = load_sd_model(work / "model")
    dataset = build_dataset(args, None)
    before = denoising_loss(model, dataset, seed=seed)
    network = Network.from_file(result.output, model=model).apply()
    after = denoising_loss(model, dataset, seed=seed)
    network.remove()
    checkpoints = sorted(p for p in result.files if p.suffix == ".safetensors" and p != result.output)
    if result.steps % (args.save_every_n_steps or 1):  # the last checkpoint is not the final LoRA
        checkpoints.append(result.output)
    grid = checkpoint_grid(model, work, checkpoints, seed)
    report = [p for p in result.files if p.suffix == ".png" and p.parent == result.output.parent]
    return QuickstartResult(result.output, result.steps, seconds, before, after, grid, report)


def checkpoint_grid(model: SDModel, work: Path, adapters: list[Path], seed: int) -> Path:
    """The checkpoints (columns) by multiplier (rows) grid of the first sample prompt."""
    request = GridRequest(
        axes=[Axis("adapter", tuple(str(p) for p in adapters)), Axis("mul", GRID_MULTIPLIERS)],
        base=PromptJob(SAMPLE_PROMPTS[0], width=IMAGE_SIZE, height=IMAGE_SIZE, steps=SAMPLE_STEPS),
        settings=GenerationSettings(seed=seed + 1),
        title=f"quickstart: checkpoints by multiplier, '{SAMPLE_PROMPTS[0]}'",
    )
    return make_grid(model, work / "model", request, work / "output" / "grid").grid
