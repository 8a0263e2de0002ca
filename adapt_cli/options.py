"""Click helpers shared by the commands: spellings, parse-time value checks, multi-value flags.

Everything here is checked while the command line is parsed, before any command imports
torch: numbers against their documented range (NaN and infinity are never a valid value),
input files for existence, device names for their form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from adapters_core.ranges import Range

F = Callable[..., Any]


def kohya_option(flag: str, *extra: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option accepted in kohya's spelling (``--network_dim``) and click's (``--network-dim``)."""
    name = flag.lstrip("-")
    spellings = [flag]
    dashed = "--" + name.replace("_", "-")
    if dashed != flag:
        spellings.append(dashed)
    return click.option(*spellings, *extra, name.replace("-", "_"), **kwargs)


def overwrite_option() -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help="Replace an existing output.")


PRECISIONS = click.Choice(["float", "fp16", "bf16"])


class Number(click.ParamType):
    """A finite int or float within ``[low, high]`` (either end optional, ``open`` excludes it).

    The range is shown in ``--help``; a value outside it is one line naming the flag.
    """

    def __init__(
        self,
        kind: type[float] = float,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        self.kind = kind
        self.range = Range(low, high, low_open, high_open)
        self.name = kind.__name__

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"{self.name.upper()} ({self.range.describe()})"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number: float
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if not self.range.admits(number):
            self.fail(f"{value!r} is out of range; expected a value {self.range.describe()}", param, ctx)
        return number


FINITE = Number(float)
POSITIVE_INT = Number(int, 1)
NON_NEGATIVE_INT = Number(int, 0)
SEED = Number(int, 0, 2**32 - 1)


class ExistingPath(click.ParamType):
    """An input that must exist: a file, or (``folder_ok``) a file or a folder."""

    def __init__(self, folder_ok: bool) -> None:
        self.folder_ok = folder_ok
        self.name = "path" if folder_ok else "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(value)
        if not path.exists():
            self.fail(f"{path}: no such {'file or folder' if self.folder_ok else 'file'}", param, ctx)
        if path.is_dir() and not self.folder_ok:
            self.fail(f"{path}: is a folder; expected a file", param, ctx)
        return path


INPUT_FILE = ExistingPath(folder_ok=False)
INPUT_PATH = ExistingPath(folder_ok=True)
ADAPTER = INPUT_PATH  # an adapter file, or a diffusers/PEFT adapter folder

_DEVICE_FORM = re.compile(r"^(cpu|meta|mps|(cuda|xpu|npu)(:\d+)?)$")


class Device(click.ParamType):
    """A torch device name: cpu, cuda, cuda:1, mps, xpu ... (availability is checked when used)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        if not _DEVICE_FORM.match(text):
            self.fail(f"{value!r} is not a device; expected cpu, cuda, cuda:N, mps or xpu", param, ctx)
        return text


DEVICE = Device()


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative ratio is a value
    except ValueError:
        return True
    return False


def expand_multi_value(args: Sequence[str], flags: frozenset[str], *, allow_empty: bool = False) -> list[str]:
    """``--models a b --ratios 1 -0.5`` -> ``--models a --models b --ratios 1 --ratios -0.5``.

    kohya's argparse ``nargs="*"``/``"+"`` flags take every following value up to the next flag
    (a negative number is a value); ``--flag=value`` starts the list with ``value``. A flag
    without values is dropped with ``allow_empty`` (``nargs="*"``), else left for click to report.
    """
    out: list[str] = []
    current: str | None = None
    consumed = False
    for index, token in enumerate(args):
        if token == "--":
            out += args[index:]
            current = None
            break
        if current is not None and not _is_flag(token):
            out += [current, token]
            consumed = True
            continue
        if current is not None and not consumed and not allow_empty:
            out.append(current)  # a flag without value: let click report it
        name, equals, inline = token.partition("=")
        current, consumed = (name, False) if name in flags else (None, False)
        if current is None:
            out.append(token)
        elif equals:
            out += [current, inline]
            consumed = True
    if current is not None and not consumed and not allow_empty:
        out.append(current)
    return out


class MultiValueCommand(click.Command):
    """A command whose ``multi_value`` options take one or more values after a single flag
    (argparse's ``nargs="+"``, which click lacks); they are declared ``multiple=True``."""

    def __init__(self, *args: Any, multi_value: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_value = tuple(multi_value)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = frozenset(opt for p in self.params if p.name in self.multi_value for opt in p.opts)
        return super().parse_args(ctx, expand_multi_value(args, flags))


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Refuse an existing output (without ``--overwrite``) or an unwritable place, before any work."""
    from adapters_core.atomic import check_writable

    check_writable(path, overwrite)


def check_suffix(path: Path, flag: str, allowed: Sequence[str], folder_allowed: bool = False) -> None:
    """Refuse an output name whose extension no writer knows (``.safetensors``, ``.ckpt`` ...)."""
    suffix = path.suffix.lower()
    if suffix in allowed or (folder_allowed and suffix == ""):
        return
    expected = ", ".join(allowed) + (" (a file), or a name without extension (a Diffusers folder)" if folder_allowed else "")
    raise click.BadParameter(f"{path}: unknown output type '{path.suffix}'; expected {expected}", param_hint=flag)
