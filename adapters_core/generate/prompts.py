"""Prompts for ``adapt generate``: one prompt per line in kohya's syntax (:mod:`adapters_core.generate.prompt_syntax`).

``adapt generate`` implements ``--n --w --h --s --l --d --am`` (``--d`` may list seeds for a
line's successive images, ``--am`` one multiplier per ``--network_weights`` file); what a line
leaves out comes from the command line (``--steps`` 50 by default). Prompt files are text
(``--from_file``); other gen_img options are ignored with a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from adapters_core.errors import ConfigError
from adapters_core.generate.prompt_syntax import parse_prompt_line as parse_syntax
from adapters_core.generate.prompt_syntax import prompt_file_lines

GENERATE_FLAGS = ("n", "w", "h", "s", "l", "d", "am")


@dataclass(frozen=True)
class PromptJob:
    """Everything one prompt needs; ``seeds`` None means "from the global seed"."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 50
    scale: float = 7.5
    seeds: tuple[int, ...] | None = None
    multipliers: tuple[float, ...] | None = None


def parse_prompt_line(line: str, base: PromptJob, where: str = "prompt") -> PromptJob:
    """One line of a prompts file, its options layered over ``base``."""
    parsed = parse_syntax(line, where, GENERATE_FLAGS)
    return replace(base, prompt=parsed.prompt, **parsed.given())


def read_prompts_file(path: str | os.PathLike[str], base: PromptJob) -> list[PromptJob]:
    """Every prompt of a prompts file (UTF-8), in order."""
    file = Path(path)
    jobs = [parse_prompt_line(line, base, where) for where, line in prompt_file_lines(file, f"--from_file {file}")]
    if not jobs:
        raise ConfigError(f"--from_file {file}: no prompts (every line is empty or a # comment)")
    return jobs
