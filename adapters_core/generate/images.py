"""``adapt generate``: images from a base model with adapters, reproducible from the seed.

Prompts are encoded as in training (the model family's ``encode_text``), not by the
pipeline, so that ``clip_skip`` means what it means in kohya and A1111 (the N-th layer from
the end, through the final layer norm) on every transformers version, and
``max_token_length`` 150/225 works. :func:`prompt_conditioning` is the one path from a prompt
to the pipeline's arguments; training samples use it too. Initial noise comes from CPU generators, so a seed gives the same image on
any device (up to kernel differences). Image ``k`` of a prompt uses seed ``--seed + k``, or
the ``k``-th seed of the line's ``--d`` list (continued by +1 steps).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters_core.api import load_networks
from adapters_core.blocks import block_multipliers_per_file
from adapters_core.errors import ConfigError, NonFiniteError
from adapters_core.family import ModelFamily
from adapters_core.generate.png import (
    NetworkInfo,
    a1111_parameters,
    adapter_short_hash,
    model_short_hash,
    next_image_index,
    save_png,
)
from adapters_core.generate.prompts import PromptJob
from adapters_core.models import SDModel, to_pipeline
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.progress import progress_bar


@dataclass(frozen=True)
class GenerationSettings:
    """Settings shared by every prompt of a run."""

    sampler: str = "ddim"
    batch_count: int = 1
    images_per_prompt: int = 1
    seed: int | None = None
    clip_skip: int | None = None
    max_token_length: int | None = None


@dataclass
class GeneratedImage:
    image: Any  # PIL image, or a float numpy array in [0, 1] with output_type="np"
    job: PromptJob
    seed: int
    multipliers: tuple[float, ...]


def prompt_conditioning(
    family: ModelFamily,
    components: Mapping[str, Any],
    tokenizers: Mapping[str, Any],
    prompt: str,
    negative_prompt: str,
    *,
    clip_skip: int | None,
    max_token_length: int | None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The pipeline arguments that carry a prompt and its negative, encoded in one batch by the
    family (``clip_skip`` 1 or ``None``: the last layer), optionally cast to ``dtype``."""
    family.check_clip_skip(components, clip_skip)
    with torch.no_grad():
        outputs = family.encode_text(
            components,
            tokenizers,
            [prompt, negative_prompt],
            max_token_length=max_token_length,
            clip_skip=clip_skip if clip_skip and clip_skip > 1 else None,
        )
    if dtype is not None:
        outputs = {name: tensor.to(dtype) for name, tensor in outputs.items()}
    positive = {name: tensor[:1] for name, tensor in outputs.items()}
    negative = {name: tensor[1:] for name, tensor in outputs.items()}
    return family.pipeline_conditioning(positive, negative)


def image_seeds(job: PromptJob, count: int, base_seed: int) -> list[int]:
    """The seeds of a prompt's ``count`` images: the line's ``--d`` list continued by +1 steps,
    else ``base_seed + k``."""
    if job.seeds:
        listed = list(job.seeds[:count])
        return listed + [listed[-1] + k for k in range(1, count - len(listed) + 1)]
    return [base_seed + k for k in range(count)]


def _check_job(job: PromptJob, defaults: Sequence[float], merged: bool) -> None:
    if job.width % 8 or job.height % 8 or job.width <= 0 or job.height <= 0:
        raise ConfigError(f"prompt {job.prompt!r}: size {job.width}x{job.height}: both sides must be positive multiples of 8")
    if job.steps < 1:
        raise ConfigError(f"prompt {job.prompt!r}: {job.steps} steps; expected at least 1")
    if not math.isfinite(job.scale):
        raise ConfigError(f"prompt {job.prompt!r}: guidance scale {job.scale}; expected a finite number")
    if job.seeds is not None and not all(0 <= seed < 2**64 for seed in job.seeds):
        raise ConfigError(f"prompt {job.prompt!r}: seeds {job.seeds}; expected whole numbers from 0 to 2**64-1")
    if job.multipliers is not None and not all(math.isfinite(m) for m in job.multipliers):
        raise ConfigError(f"prompt {job.prompt!r}: --am {job.multipliers}; expected finite numbers")
    if job.multipliers is None:
        return
    if len(job.multipliers) != len(defaults):
        raise ConfigError(f"prompt {job.prompt!r}: --am gives {len(job.multipliers)} multipliers for {len(defaults)} networks")
    if merged and tuple(job.multipliers) != tuple(defaults):
        raise ConfigError(f"prompt {job.prompt!r}: --am cannot change multipliers of merged networks (drop --merge)")


def _stop_on_non_finite(job: PromptJob) -> Callable[..., dict[str, Any]]:
    """A pipeline step callback that stops as soon as the latents hold NaN or infinity, so a
    broken adapter or an fp16 overflow never becomes a black or noise image on disk."""

    def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if not bool(torch.isfinite(tensors["latents"]).all()):
            raise NonFiniteError(
                f"prompt {job.prompt!r}: the latents became NaN or infinite at step {step + 1}; nothing was "
                "written (an adapter with extreme weights or a multiplier too large, or fp16 overflow: try --dtype float)"
            )
        return tensors

    return check


def _set_multipliers(networks: Sequence[Network], multipliers: Sequence[float]) -> None:
    for network, multiplier in zip(networks, multipliers):
        network.set_multiplier(multiplier)


def generate(
    pipe: Any,
    jobs: Sequence[PromptJob],
    settings: GenerationSettings,
    networks: Sequence[Network] = (),
    *,
    merged: bool = False,
    output_type: str = "pil",
) -> Iterator[GeneratedImage]:
    """Run every job ``batch_count`` times with ``images_per_prompt`` images per pipeline call.

    Every job is checked before the first image; a line's ``--am`` multipliers apply to its
    images only (patched networks get their multipliers back at the end).
    """
    base_seed = settings.seed if settings.seed is not None else secrets.randbelow(2**32)
    family = get_registry().family_of_pipeline(pipe)
    components, tokenizers = family.pipeline_components(pipe), family.pipeline_tokenizers(pipe)
    defaults = tuple(network.multiplier for network in networks)
    for job in jobs:
        _check_job(job, defaults, merged)
    per_prompt = settings.batch_count * settings.images_per_prompt
    try:
        for job in jobs:
            multipliers = tuple(job.multipliers) if job.multipliers is not None else defaults
            if not merged:
                _set_multipliers(networks, multipliers)
            seeds = image_seeds(job, per_prompt, base_seed)
            conditioning = prompt_conditioning(
                family, components, tokenizers, job.prompt, job.negative_prompt,
                clip_skip=settings.clip_skip, max_token_length=settings.max_token_length,
            )
            for start in range(0, per_prompt, settings.images_per_prompt):
                batch = seeds[start:start + settings.images_per_prompt]
                result = pipe(
                    **conditioning,
                    num_images_per_prompt=len(batch),
                    width=job.width,
                    height=job.height,
                    num_inference_steps=job.steps,
                    guidance_scale=job.scale,
                    generator=[torch.Generator("cpu").manual_seed(seed) for seed in batch],
                    output_type=output_type,
                    callback_on_step_end=_stop_on_non_finite(job),
                    callback_on_step_end_tensor_inputs=["latents"],
                )
                for image, seed in zip(result.images, batch):
                    yield GeneratedImage(image, job, seed, multipliers)
    finally:
        if not merged:
            _set_multipliers(networks, defaults)


@dataclass(frozen=True)
class ModelIdentity:
    """How a PNG names the base model: A1111's name (file stem or folder) and short hash."""

    name: str
    short_hash: str | None

    @classmethod
    def of(cls, model_path: str | os.PathLike[str]) -> ModelIdentity:
        path = Path(model_path)
        return cls(path.stem if path.is_file() else path.name, model_short_hash(path))


def image_parameters(
    item: GeneratedImage, settings: GenerationSettings, model: ModelIdentity, networks: Sequence[NetworkInfo]
) -> str:
    """The A1111 ``parameters`` text of one generated image."""
    job = item.job
    return a1111_parameters(
        prompt=job.prompt, negative_prompt=job.negative_prompt, steps=job.steps, sampler=settings.sampler,
        scale=job.scale, seed=item.seed, width=job.width, height=job.height, model_name=model.name,
        model_hash=model.short_hash, networks=networks, clip_skip=settings.clip_skip,
    )


def generate_to_folder(
    model: SDModel,
    model_path: str | os.PathLike[str],
    jobs: Sequence[PromptJob],
    settings: GenerationSettings,
    outdir: str | os.PathLike[str],
    *,
    network_weights: Sequence[str | os.PathLike[str]] = (),
    network_mul: Sequence[float] | None = None,
    merge: bool = False,
    allow_unmatched: bool = False,
    block_weights: Sequence[str] = (),
) -> list[Path]:
    """Apply the networks to ``model`` (loaded from ``model_path``), generate every image and
    write it as ``NNNNN-<seed>.png``.

    ``block_weights``: per-block multiplier specs, one for every file or one per file. A key
    that loads nowhere stops the run unless ``allow_unmatched``.
    """
    model.family.check_clip_skip(model.components, settings.clip_skip)
    pipe = to_pipeline(model, settings.sampler)
    blocks = block_multipliers_per_file(block_weights, len(network_weights))
    networks = load_networks(
        pipe, network_weights, network_mul, merge=merge, allow_unmatched=allow_unmatched, block_multipliers=blocks
    )
    folder = Path(outdir)  # made by the first image written
    identity = ModelIdentity.of(model_path)
    hashes = [adapter_short_hash(path) for path in network_weights]
    index = next_image_index(folder)
    total = len(jobs) * settings.batch_count * settings.images_per_prompt
    written: list[Path] = []
    with progress_bar(total, "generating", unit="image") as progress:
        for item in generate(pipe, jobs, settings, networks, merged=merge):
            infos = [
                NetworkInfo(Path(path).stem, multiplier, short_hash)
                for path, multiplier, short_hash in zip(network_weights, item.multipliers, hashes)
            ]
            parameters = image_parameters(item, settings, identity, infos)
            written.append(save_png(item.image, folder / f"{index:05d}-{item.seed}.png", parameters))
            index += 1
            progress.update(1)
    return written
