"""Sample images during training (``--sample_prompts``, ``--sample_every_n_steps/epochs``).

Prompt files as kohya reads them (:mod:`adapters_core.generate.prompt_syntax`): ``.txt`` (one prompt per
line, ``#`` comments, options ``--n`` negative prompt, ``--w``/``--h`` size, ``--s`` steps
(30 when left out, kohya's default), ``--l`` guidance scale, ``--d`` seed, ``--ss`` sampler),
``.toml`` (``[prompt]`` defaults plus ``[[prompt.subset]]`` entries) or ``.json`` (a list of
strings or objects). Images go to ``<output_dir>/sample/`` named
``<output_name>_<step:06d>_<index:02d>_<timestamp>[_<seed>].png`` (``e<epoch:06d>`` instead
of the step at the end of an epoch), as kohya names them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError
from adapters_core.generate.images import prompt_conditioning
from adapters_core.generate.prompt_syntax import PromptLine, read_prompt_file
from adapters_core.models import SDModel, to_pipeline
from adapters_core.models.pipeline import SCHEDULERS

log = logging.getLogger(__name__)

# kohya's sampler names that differ from the pipeline's scheduler names.
SAMPLER_ALIASES = {"k_euler": "euler", "k_euler_a": "euler_a", "k_lms": "lms", "dpmsolver": "dpmsolver++"}

SAMPLE_FLAGS = ("n", "w", "h", "s", "l", "d", "ss")


@dataclass(frozen=True)
class SamplePrompt:
    """One sample image to generate, with kohya's defaults (512x512, 30 steps, scale 7.5)."""

    prompt: str
    index: int = 0
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None


def sampler_name(name: str, where: str) -> str:
    """A kohya sampler name as the pipeline's scheduler name; unknown names are an error."""
    resolved = SAMPLER_ALIASES.get(name.lower(), name.lower())
    if resolved not in SCHEDULERS:
        known = ", ".join(sorted({*SCHEDULERS, *SAMPLER_ALIASES}))
        raise ConfigError(f"{where}: sampler '{name}' is not supported; expected one of {known}")
    return resolved


def sample_prompt(line: PromptLine, index: int = 0) -> SamplePrompt:
    """A parsed prompt as a sample image: kohya's defaults for what it leaves out, the size
    rounded down to a multiple of 8 (at least 64), steps within 1..1000, the sampler checked."""
    given = line.given()
    seeds = given.pop("seeds", None)
    if seeds is not None and len(seeds) != 1:
        raise ConfigError(f"{line.where}: --d {','.join(map(str, seeds))}: a sample image takes one seed")
    prompt = SamplePrompt(line.prompt, index, **given, seed=seeds[0] if seeds else None)
    steps = max(1, min(1000, prompt.steps))
    width, height = max(64, prompt.width - prompt.width % 8), max(64, prompt.height - prompt.height % 8)
    sampler = sampler_name(prompt.sampler, line.where) if prompt.sampler else None
    return replace(prompt, steps=steps, width=width, height=height, sampler=sampler)


def load_prompts(path: str | Path) -> list[SamplePrompt]:
    """Read a ``.txt``, ``.toml`` or ``.json`` prompt file."""
    file = Path(path)
    lines = read_prompt_file(file, f"--sample_prompts {file}", SAMPLE_FLAGS)
    return [sample_prompt(line, index) for index, line in enumerate(lines)]


def is_sample_time(
    step: int, epoch: int | None, *, every_n_steps: int | None, every_n_epochs: int | None, at_first: bool
) -> bool:
    """kohya's rule: step 0 only with --sample_at_first; epochs override steps; ``epoch`` is
    given only at the end of an epoch."""
    if step == 0:
        return at_first
    if every_n_epochs is not None:
        return epoch is not None and epoch % every_n_epochs == 0
    if every_n_steps is not None:
        return epoch is None and step % every_n_steps == 0
    return False


def image_name(output_name: str | None, step: int, epoch: int | None, prompt: SamplePrompt) -> str:
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
    seed = "" if prompt.seed is None else f"_{prompt.seed}"
    prefix = f"{output_name}_" if output_name else ""
    return f"{prefix}{number}_{prompt.index:02d}_{stamp}{seed}.png"


@torch.no_grad()
def generate_samples(
    model: SDModel,
    prompts: list[SamplePrompt],
    out_dir: Path,
    *,
    output_name: str | None,
    step: int,
    epoch: int | None,
    default_sampler: str,
    clip_skip: int | None,
    max_token_length: int | None,
    device: torch.device,
    autocast: Any,
) -> list[Path]:
    """Generate one PNG per prompt with the model as it is now (the network applied)."""
    written = []
    for prompt in prompts:
        pipe = to_pipeline(model, prompt.sampler or default_sampler)
        conditioning = prompt_conditioning(
            model.family, model.components, model.tokenizers, prompt.prompt, prompt.negative_prompt or "",
            clip_skip=clip_skip, max_token_length=max_token_length, dtype=model.unet.dtype,
        )
        seed = prompt.seed if prompt.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator(device=device).manual_seed(seed)
        with autocast():
            image = pipe(
                **conditioning,
                height=prompt.height,
                width=prompt.width,
                num_inference_steps=prompt.steps,
                guidance_scale=prompt.scale,
                generator=generator,
            ).images[0]
        path = out_dir / image_name(output_name, step, epoch, prompt)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        written.append(path)
    log.info("sample images: %s", ", ".join(p.name for p in written))
    return written
