"""``adapt grid``: one labelled PNG over up to three axes, as A1111's X/Y/Z plot, plus every image.

An axis is ``KIND=VALUES``:

- ``adapter=run/*.safetensors`` adapter files (globs expand, in natural order; ``none`` for the
  base model alone): each is stacked on the ``--network_weights`` files
- ``mul=0,0.5,1`` the multiplier of the axis adapter, else of every ``--network_weights`` file
- ``blocks=ALL|OUTS|INS`` per-block multipliers (presets or lists), applied likewise
- ``prompt=a cat|a dog`` prompts (``|``-separated; kohya's per-line options allowed)
- ``seed=1,2,3``, ``steps=10,20``, ``cfg=5,7.5``, ``sampler=ddim,euler_a``

Values are ``,``-separated unless the text holds a ``|`` (prompts and block lists always use
``|``). X runs along the columns, Y down the rows, Z across side-by-side sub-grids. Every cell
is made by :func:`adapters_core.generate.generate` on one pipeline loaded once; the cells are
visited adapter by adapter, so each adapter file is loaded once, and each image is written
(with A1111 parameters) and pasted into the canvas before the next is made.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL.PngImagePlugin import PngInfo

from adapters_core.api import load_networks
from adapters_core.atomic import atomic_path
from adapters_core.blocks import block_multipliers_per_file, parse_block_multipliers
from adapters_core.choices import GRID_AXIS_KINDS
from adapters_core.errors import ConfigError
from adapters_core.generate.grid_image import GridLayout, display_scale
from adapters_core.generate.images import (
    GenerationSettings,
    ModelIdentity,
    generate,
    image_parameters,
)
from adapters_core.generate.png import (
    PARAMETERS_KEY,
    NetworkInfo,
    adapter_short_hash,
    next_image_index,
    save_png,
)
from adapters_core.generate.prompts import PromptJob, parse_prompt_line
from adapters_core.models import SDModel, to_pipeline
from adapters_core.models.pipeline import SCHEDULERS
from adapters_core.network import Network
from adapters_core.progress import progress_bar

GRID_KEY = "adapt_grid"  # PNG text chunk with the grid's parameters as JSON
AXIS_KINDS = GRID_AXIS_KINDS
_PIPE_SEPARATED = ("prompt", "blocks")
_ALIASES = {"multiplier": "mul", "lora": "adapter", "network": "adapter", "scale": "cfg", "block_weights": "blocks"}


@dataclass(frozen=True)
class Axis:
    """One axis: its kind and its values (parsed)."""

    kind: str
    values: tuple[Any, ...]

    def label(self, index: int) -> str:
        value = self.values[index]
        if self.kind == "adapter":
            return "no adapter" if value is None else Path(value).stem
        if self.kind == "blocks":
            return f"blocks: {value.spec}"
        if self.kind == "prompt":
            return value
        return f"{self.kind}: {value:g}" if isinstance(value, float) else f"{self.kind}: {value}"


def _natural_key(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _adapter_files(item: str, where: str) -> list[str | None]:
    if item.lower() == "none":
        return [None]
    if any(c in item for c in "*?["):
        matches = sorted(glob.glob(item), key=_natural_key)
        if not matches:
            raise ConfigError(f"{where}: '{item}' matches no file")
        return list(matches)
    if not os.path.isfile(item):
        raise ConfigError(f"{where}: {item}: no such adapter file")
    return [item]


def parse_axis(spec: str, where: str) -> Axis:
    """``"mul=0,0.5,1"`` -> ``Axis("mul", (0.0, 0.5, 1.0))``; one clear error for bad input."""
    kind, sep, text = spec.partition("=")
    kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if not sep or kind not in AXIS_KINDS:
        raise ConfigError(f"{where} {spec!r}: expected KIND=VALUES with KIND one of {', '.join(AXIS_KINDS)}")
    separator = "|" if kind in _PIPE_SEPARATED or "|" in text else ","
    items = [item.strip() for item in text.split(separator) if item.strip()]
    if not items:
        raise ConfigError(f"{where} {spec!r}: no values after '='")
    try:
        if kind == "adapter":
            values: list[Any] = [path for item in items for path in _adapter_files(item, where)]
        elif kind in ("mul", "cfg"):
            values = [float(item) for item in items]
        elif kind in ("seed", "steps"):
            values = [int(item) for item in items]
        elif kind == "blocks":
            values = [parse_block_multipliers(item, where) for item in items]
        elif kind == "sampler":
            unknown = [item for item in items if item not in SCHEDULERS]
            if unknown:
                raise ConfigError(f"{where}: sampler {unknown[0]!r}: expected one of {', '.join(SCHEDULERS)}")
            values = items
        else:
            values = items
    except ValueError:
        cast = "integers" if kind in ("seed", "steps") else "numbers"
        raise ConfigError(f"{where} {spec!r}: the values of '{kind}' must be {cast}") from None
    return Axis(kind, tuple(values))


@dataclass(frozen=True)
class GridRequest:
    """Everything a grid needs besides the model."""

    axes: Sequence[Axis]  # x, y, z (one to three)
    base: PromptJob
    settings: GenerationSettings
    network_weights: Sequence[str | os.PathLike[str]] = ()
    network_mul: Sequence[float] | None = None
    block_weights: Sequence[str] = ()  # one spec for all adapters, or one per file (the axis adapter last)
    title: str = ""


@dataclass(frozen=True)
class GridResult:
    grid: Path
    images: list[Path]


def _cell_values(axes: Sequence[Axis], cell: tuple[int, ...]) -> dict[str, Any]:
    return {axis.kind: axis.values[index] for axis, index in zip(axes, cell)}


def _job(base: PromptJob, values: dict[str, Any], seed: int) -> PromptJob:
    job = parse_prompt_line(values["prompt"], base, "--axis prompt") if "prompt" in values else base
    job = replace(job, seeds=(values.get("seed", job.seeds[0] if job.seeds else seed),))
    if "steps" in values:
        job = replace(job, steps=values["steps"])
    if "cfg" in values:
        job = replace(job, scale=values["cfg"])
    return job


def check_axes(axes: Sequence[Axis], has_adapters: bool) -> None:
    """One to three axes of distinct kinds; multiplier axes only with adapters."""
    if not 1 <= len(axes) <= 3:
        raise ConfigError("give one to three axes (--x, --y, --z)")
    kinds = [axis.kind for axis in axes]
    repeated = next((k for k in kinds if kinds.count(k) > 1), None)
    if repeated:
        raise ConfigError(f"axis kind '{repeated}' is used twice; each kind may vary along one axis only")
    if not has_adapters and ({"mul", "blocks"} & set(kinds)):
        raise ConfigError("a 'mul' or 'blocks' axis needs adapters: an 'adapter' axis or --network_weights")


def _grid_parameters(request: GridRequest, model: ModelIdentity) -> str:
    return json.dumps(
        {
            "model": asdict(model),
            "axes": [
                {"kind": a.kind, "values": [a.label(i) if a.kind in ("adapter", "blocks") else v
                                            for i, v in enumerate(a.values)]}
                for a in request.axes
            ],
            "base": asdict(request.base),
            "settings": asdict(request.settings),
            "network_weights": [str(p) for p in request.network_weights],
            "network_mul": list(request.network_mul or []),
            "block_weights": list(request.block_weights),
        },
        default=str,
    )


def make_grid(model: SDModel, model_path: str | os.PathLike[str], request: GridRequest, outdir: Path) -> GridResult:
    """Generate every cell and write ``grid-NNNNN.png`` and the single images into ``outdir``."""
    check_axes(request.axes, bool(request.network_weights) or any(a.kind == "adapter" for a in request.axes))
    axes = list(request.axes)
    seed = request.settings.seed if request.settings.seed is not None else 0
    settings = replace(request.settings, seed=seed, batch_count=1, images_per_prompt=1)
    identity = ModelIdentity.of(model_path)
    pipes = {settings.sampler: to_pipeline(model, settings.sampler)}
    pipe = pipes[settings.sampler]
    adapter_axis = next((i for i, a in enumerate(axes) if a.kind == "adapter"), None)
    count = len(request.network_weights) + (adapter_axis is not None)
    blocks = block_multipliers_per_file(request.block_weights, count)
    for axis in axes:  # every block spec fits this model's layout before the first image
        for value in axis.values if axis.kind == "blocks" else ():
            value.factors(model.family.blocks, model.family.name)
    fixed_blocks = blocks[: len(request.network_weights)]
    varied_blocks = blocks[-1] if adapter_axis is not None else None
    fixed = load_networks(pipe, request.network_weights, request.network_mul, block_multipliers=fixed_blocks)
    fixed_infos = [(Path(p).stem, adapter_short_hash(p)) for p in request.network_weights]
    outdir.mkdir(parents=True, exist_ok=True)
    index = next_image_index(outdir)
    grid_path = outdir / f"grid-{index:05d}.png"
    sizes = [range(len(a.values)) for a in axes] + [range(1)] * (3 - len(axes))
    scale = display_scale(request.base.width, request.base.height)
    layout = GridLayout(
        request.title, [axes[0].label(i) for i in sizes[0]],
        [axes[1].label(i) for i in sizes[1]] if len(axes) > 1 else [""],
        [axes[2].label(i) for i in sizes[2]] if len(axes) > 2 else [""],
        request.base.width * scale, request.base.height * scale,
    )
    canvas = layout.canvas()
    cells = sorted(itertools.product(*sizes), key=lambda c: c[adapter_axis] if adapter_axis is not None else 0)
    varied: Network | None = None
    varied_path: str | None = None
    varied_hash = ""
    written: list[Path] = []
    first_parameters = ""
    try:
        with progress_bar(len(cells), "grid", unit="image") as bar:
            for cell in cells:
                values = _cell_values(axes, cell)
                if adapter_axis is not None and values["adapter"] != varied_path:
                    if varied is not None:
                        varied.remove()
                    varied_path = values["adapter"]
                    varied = None if varied_path is None else load_networks(pipe, [varied_path])[0]
                    varied_hash = "" if varied_path is None else adapter_short_hash(varied_path)
                varied_defaults = [(varied, 1.0, varied_blocks)] if varied is not None else []
                fixed_defaults = list(zip(fixed, request.network_mul or [1.0] * len(fixed), fixed_blocks))
                for network, multiplier, file_blocks in varied_defaults if adapter_axis is not None else fixed_defaults:
                    network.set_block_multipliers(values.get("blocks", file_blocks))
                    network.set_multiplier(values.get("mul", multiplier))
                sampler = values.get("sampler", settings.sampler)
                if sampler not in pipes:
                    pipes[sampler] = to_pipeline(model, sampler)
                active = [n for n in [*fixed, varied] if n is not None]
                cell_settings = replace(settings, sampler=sampler)
                (item,) = generate(pipes[sampler], [_job(request.base, values, seed)], cell_settings, active)
                infos = [NetworkInfo(name, n.multiplier, h) for (name, h), n in zip(fixed_infos, fixed)]
                if varied is not None and varied_path is not None:
                    infos.append(NetworkInfo(Path(varied_path).stem, varied.multiplier, varied_hash))
                parameters = image_parameters(item, cell_settings, identity, infos)
                first_parameters = first_parameters or parameters
                written.append(save_png(item.image, outdir / f"{index + 1 + len(written):05d}-{item.seed}.png",
                                        parameters))
                layout.paste(canvas, item.image, cell[0], cell[1], cell[2])
                bar.update()
    finally:
        if varied is not None:
            varied.remove()
        for network in fixed:
            network.remove()
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, first_parameters)
    info.add_text(GRID_KEY, _grid_parameters(request, identity))
    with atomic_path(grid_path) as tmp:
        canvas.save(tmp, format="PNG", pnginfo=info)
    return GridResult(grid_path, written)
