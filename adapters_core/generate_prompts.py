"""Prompts for ``adapt generate``: one prompt per line with kohya's per-line options.

A line is ``<prompt> --n <negative> --w 512 --h 768 --s 30 --l 7.5 --d 42 --am 0.8,0.5``
(the syntax of kohya's ``gen_img.py --from_file`` and ``--sample_prompts``): options start
at `` --``, in any order; anything a line leaves out comes from the command line.

- ``--n`` negative prompt, ``--w``/``--h`` width/height, ``--s`` steps, ``--l`` guidance scale
- ``--d`` seed, or comma-separated seeds for the line's successive images
- ``--am`` network multipliers, one per ``--network_weights`` file (comma-separated)

Empty lines and lines starting with ``#`` are skipped; other gen_img options are ignored
with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from adapters_core.errors import ConfigError
from adapters_core.textfiles import read_text

log = logging.getLogger(__name__)

_OPTION_RE = re.compile(r"^(?P<flag>[a-z]+)(?:\s+(?P<value>.*))?$", re.DOTALL)


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


def _number(where: str, flag: str, text: str, cast: type[int] | type[float]) -> int | float:
    try:
        return cast(text)
    except ValueError:
        raise ConfigError(f"{where}: --{flag} {text!r}: expected a{'n integer' if cast is int else ' number'}") from None


def _numbers(where: str, flag: str, text: str, cast: type[int] | type[float]) -> tuple:
    return tuple(_number(where, flag, item.strip(), cast) for item in text.split(",") if item.strip())


def parse_prompt_line(line: str, base: PromptJob, where: str = "prompt") -> PromptJob:
    """One line of a prompts file, its options layered over ``base``."""
    prompt, *options = f" {line.strip()}".split(" --")
    job = replace(base, prompt=prompt.strip())
    for option in options:
        match = _OPTION_RE.match(option.strip())
        if match is None or match.group("value") is None:
            raise ConfigError(f"{where}: ' --{option.strip()}' is not of the form '--<letter> <value>'")
        flag, value = match.group("flag"), match.group("value").strip()
        if flag == "n":
            job = replace(job, negative_prompt=value)
        elif flag == "w":
            job = replace(job, width=int(_number(where, flag, value, int)))
        elif flag == "h":
            job = replace(job, height=int(_number(where, flag, value, int)))
        elif flag == "s":
            job = replace(job, steps=int(_number(where, flag, value, int)))
        elif flag == "l":
            job = replace(job, scale=float(_number(where, flag, value, float)))
        elif flag == "d":
            job = replace(job, seeds=_numbers(where, flag, value, int))
        elif flag == "am":
            job = replace(job, multipliers=_numbers(where, flag, value, float))
        else:  # gen_img options adapt does not implement (--t, --nl, --c ...): ignored, as kohya ignores unknown ones
            log.warning("%s: option --%s is not supported and was ignored", where, flag)
    if not job.prompt:
        raise ConfigError(f"{where}: the line has options but no prompt")
    return job


def read_prompts_file(path: str | os.PathLike[str], base: PromptJob) -> list[PromptJob]:
    """Every prompt of a prompts file (UTF-8), in order."""
    file = Path(path)
    lines = read_text(file, f"--from_file {file}").splitlines()
    jobs = [
        parse_prompt_line(line, base, f"{file}:{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not jobs:
        raise ConfigError(f"--from_file {file}: no prompts (every line is empty or a # comment)")
    return jobs
