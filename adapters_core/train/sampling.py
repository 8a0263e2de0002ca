"""Sample images during training (``--sample_prompts``, ``--sample_every_n_steps/epochs``).

Prompt files as kohya reads them: ``.txt`` (one prompt per line, ``#`` comments, options
``--n`` negative prompt, ``--w``/``--h`` size, ``--s`` steps, ``--l`` guidance scale, ``--d``
seed, ``--ss`` sampler), ``.toml`` (``[prompt]`` defaults plus ``[[prompt.subset]]`` entries) or
``.json`` (a list of strings or objects). Images go to ``<output_dir>/sample/`` named
``<output_name>_<step:06d>_<index:02d>_<timestamp>[_<seed>].png`` (``e<epoch:06d>`` instead
of the step at the end of an epoch), as kohya names them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError
from adapters_core.generate import prompt_conditioning
from adapters_core.models import SDModel, to_pipeline
from adapters_core.models.pipeline import SCHEDULERS
from adapters_core.textfiles import read_json, read_text, read_toml

log = logging.getLogger(__name__)

# kohya's sampler names that differ from the pipeline's scheduler names.
SAMPLER_ALIASES = {"k_euler": "euler", "k_euler_a": "euler_a", "k_lms": "lms", "dpmsolver": "dpmsolver++"}

_OPTIONS = {
    "n": ("negative_prompt", str),
    "w": ("width", int),
    "h": ("height", int),
    "s": ("steps", int),
    "l": ("scale", float),
    "d": ("seed", int),
    "ss": ("sampler", str),
}
_JSON_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "sample_steps": "steps",
    "scale": "scale",
    "seed": "seed",
    "sample_sampler": "sampler",
}


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


def parse_prompt_line(line: str, index: int = 0, where: str = "prompt") -> SamplePrompt:
    """``"a cat --n blurry --w 640 --s 20"`` -> SamplePrompt (unknown options are ignored, as kohya)."""
    parts = line.split(" --")
    values: dict[str, Any] = {"prompt": parts[0].strip(), "index": index}
    for part in parts[1:]:
        match = re.match(r"(ss|[nwhsld])\s+(.+)", part.strip(), re.IGNORECASE)
        if match is None:
            continue
        field_name, cast = _OPTIONS[match.group(1).lower()]
        try:
            values[field_name] = cast(match.group(2).strip())
        except ValueError:
            raise ConfigError(f"{where}: '--{part.strip()}' has a bad value") from None
    return _checked(SamplePrompt(**values), where)


def _checked(prompt: SamplePrompt, where: str) -> SamplePrompt:
    steps = max(1, min(1000, prompt.steps))
    width, height = max(64, prompt.width - prompt.width % 8), max(64, prompt.height - prompt.height % 8)
    sampler = sampler_name(prompt.sampler, where) if prompt.sampler else None
    return replace(prompt, steps=steps, width=width, height=height, sampler=sampler)


def load_prompts(path: str | Path) -> list[SamplePrompt]:
    """Read a ``.txt``, ``.toml`` or ``.json`` prompt file."""
    file = Path(path)
    where = f"--sample_prompts {file}"
    if file.suffix.lower() == ".toml":
        data = read_toml(file, where).get("prompt", {})
        base = {k: v for k, v in data.items() if k != "subset"}
        entries: list[Any] = [{**base, **subset} for subset in data.get("subset", [])]
    elif file.suffix.lower() == ".json":
        entries = read_json(file, where)
    else:
        entries = [line.strip() for line in read_text(file, where).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    prompts = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            prompts.append(parse_prompt_line(entry, index, where))
        elif isinstance(entry, dict):
            values = {_JSON_KEYS[k]: v for k, v in entry.items() if k in _JSON_KEYS}
            prompts.append(_checked(SamplePrompt(index=index, **values), where))
        else:
            raise ConfigError(f"{where}: entry {index + 1} is neither a prompt string nor a table")
    return prompts


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
