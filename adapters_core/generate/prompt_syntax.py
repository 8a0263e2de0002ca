"""kohya's prompt syntax, read once for ``adapt generate`` and for the sample images of ``adapt train``.

A line is ``<prompt> --n <negative> --w 512 --h 768 --s 30 --l 7.5 --d 42`` (the syntax of
kohya's ``gen_img.py --from_file`` and ``--sample_prompts``): options start at `` --``, in any
order, the flag in either case; the last of a repeated flag wins.

- ``--n`` negative prompt, ``--w``/``--h`` width/height, ``--s`` steps, ``--l`` guidance scale
- ``--d`` seed, or comma-separated seeds for a line's successive images
- ``--am`` network multipliers, one per adapter (comma-separated)
- ``--ss`` sampler

Each caller names the flags it implements; any other flag is ignored with a warning, as kohya
ignores options it does not know. What a line leaves out is the caller's to fill: the syntax
has no defaults. Prompt files are text (one line per prompt; empty lines and ``#`` comments
skipped) or, for sample prompts, kohya's ``.toml`` (``[prompt]`` defaults plus
``[[prompt.subset]]`` entries) and ``.json`` (a list of lines or objects), whose keys
(:data:`FILE_KEYS`) stand for the same options.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from adapters_core.errors import ConfigError
from adapters_core.textfiles import read_json, read_text, read_toml

log = logging.getLogger(__name__)

_OPTION_RE = re.compile(r"^(?P<flag>[a-zA-Z]+)(?:\s+(?P<value>.*))?$", re.DOTALL)


@dataclass(frozen=True)
class PromptLine:
    """A prompt and the options it set (``None``: left out); ``where`` names its file and line."""

    prompt: str
    where: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    scale: float | None = None
    seeds: tuple[int, ...] | None = None
    multipliers: tuple[float, ...] | None = None
    sampler: str | None = None

    def given(self) -> dict[str, Any]:
        """The options the line set, by field name (``{"width": 640, "seeds": (3, 9)}``)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("prompt", "where") and getattr(self, f.name) is not None
        }


def _number(where: str, flag: str, text: str, cast: type[int] | type[float]) -> int | float:
    try:
        return cast(text)
    except ValueError:
        raise ConfigError(f"{where}: --{flag} {text!r}: expected a{'n integer' if cast is int else ' number'}") from None


def _numbers(where: str, flag: str, text: str, cast: type[int] | type[float]) -> tuple:
    return tuple(_number(where, flag, item.strip(), cast) for item in text.split(",") if item.strip())


_Reader = Callable[[str, str, str], Any]
FLAGS: dict[str, tuple[str, _Reader]] = {
    "n": ("negative_prompt", lambda where, flag, text: text),
    "w": ("width", lambda where, flag, text: int(_number(where, flag, text, int))),
    "h": ("height", lambda where, flag, text: int(_number(where, flag, text, int))),
    "s": ("steps", lambda where, flag, text: int(_number(where, flag, text, int))),
    "l": ("scale", lambda where, flag, text: float(_number(where, flag, text, float))),
    "d": ("seeds", lambda where, flag, text: _numbers(where, flag, text, int)),
    "am": ("multipliers", lambda where, flag, text: _numbers(where, flag, text, float)),
    "ss": ("sampler", lambda where, flag, text: text),
}
"""Flag -> (the :class:`PromptLine` field it sets, the reader of its value)."""

FILE_KEYS = {
    "negative_prompt": "n",
    "width": "w",
    "height": "h",
    "sample_steps": "s",
    "scale": "l",
    "seed": "d",
    "sample_sampler": "ss",
}
"""The keys of a ``.toml``/``.json`` prompt entry (kohya's names) -> the flag they stand for."""


def parse_prompt_line(line: str, where: str, flags: Collection[str]) -> PromptLine:
    """One line of kohya's syntax; options outside ``flags`` are ignored with a warning."""
    prompt, *options = f" {line.strip()}".split(" --")
    values: dict[str, Any] = {}
    for option in options:
        match = _OPTION_RE.match(option.strip())
        if match is None or match.group("value") is None:
            raise ConfigError(f"{where}: ' --{option.strip()}' is not of the form '--<letter> <value>'")
        flag, value = match.group("flag").lower(), match.group("value").strip()
        if flag not in flags:  # gen_img options adapt does not implement (--t, --nl, --c ...)
            log.warning("%s: option --%s is not supported and was ignored", where, flag)
            continue
        field_name, read = FLAGS[flag]
        values[field_name] = read(where, flag, value)
    if not prompt.strip():
        raise ConfigError(f"{where}: the line has options but no prompt")
    return PromptLine(prompt.strip(), where, **values)


def prompt_entry(entry: Mapping[str, Any], where: str, flags: Collection[str]) -> PromptLine:
    """A ``.toml``/``.json`` prompt object: ``prompt`` plus :data:`FILE_KEYS`; other keys are ignored."""
    prompt = entry.get("prompt")
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: expected a 'prompt' string")
    values: dict[str, Any] = {}
    for key, value in entry.items():
        flag = FILE_KEYS.get(key)
        if flag is None or flag not in flags or value is None:
            continue
        field_name, read = FLAGS[flag]
        values[field_name] = read(f"{where} ({key})", flag, str(value))
    return PromptLine(prompt, where, **values)


def prompt_file_lines(file: Path, where: str) -> list[tuple[str, str]]:
    """``(file:line, text)`` of each prompt line of a text file; empty lines and ``#`` comments skipped."""
    lines = read_text(file, where).splitlines()
    return [
        (f"{file}:{number}", line)
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def read_prompt_file(file: Path, where: str, flags: Collection[str]) -> list[PromptLine]:
    """Every prompt of a ``.txt``, ``.toml`` or ``.json`` prompt file (by suffix; text otherwise), in order."""
    suffix = file.suffix.lower()
    if suffix == ".toml":
        data = read_toml(file, where).get("prompt", {})
        base = {key: value for key, value in data.items() if key != "subset"}
        entries: list[Any] = [{**base, **subset} for subset in data.get("subset", [])]
    elif suffix == ".json":
        entries = read_json(file, where)
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: expected a JSON list of prompts")
    else:
        return [parse_prompt_line(line, place, flags) for place, line in prompt_file_lines(file, where)]
    prompts = []
    for number, entry in enumerate(entries, start=1):
        place = f"{where}: entry {number}"
        if isinstance(entry, str):
            prompts.append(parse_prompt_line(entry, place, flags))
        elif isinstance(entry, dict):
            prompts.append(prompt_entry(entry, place, flags))
        else:
            raise ConfigError(f"{place}: neither a prompt string nor a table")
    return prompts
