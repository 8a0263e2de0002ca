"""``adapt inspect``: what an adapter file holds, for people (text) and scripts (JSON).

Type (``detect_network``), source format (kohya, diffusers, peft), base model (metadata),
modules and keys per block (the 25-block index; ``TE`` for the text encoder), ranks and alphas
(``module_options_from_tensors``), the Frobenius norm of each module's delta (``delta_weight``
at the layer shape that :class:`~adapters_core.ops.deltas.LayerShapes` finds) and the metadata.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from adapters_core.blocks import MID_BLOCK_INDEX
from adapters_core.errors import ShapeMismatchError
from adapters_core.ops.deltas import LayerShapes, dim_alpha, naming_family, progress, read_adapter
from adapters_core.plugins import get_registry
from adapters_core.targets import block_label

LONG_VALUE = 100



@dataclass
class ModuleInfo:
    name: str
    block: str
    keys: int
    dim: int
    alpha: float
    shape: list[int] | None
    norm: float | None


@dataclass
class BlockInfo:
    block: str
    modules: int = 0
    keys: int = 0
    ranks: list[int] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    norm: float | None = None


@dataclass
class AdapterReport:
    path: str
    network: str
    network_module: str
    source_format: str
    base_model: str
    modules: int
    keys: int
    ranks: list[int]
    alphas: list[float]
    blocks: list[BlockInfo]
    module_list: list[ModuleInfo]
    metadata: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _block_order(label: str) -> int:
    if label == "TE":
        return -1
    if label == "MID":
        return MID_BLOCK_INDEX
    if label.startswith("IN"):
        return int(label[2:])
    if label.startswith("OUT"):
        return MID_BLOCK_INDEX + 1 + int(label[3:])
    return 1 << 8


def _base_model(metadata: dict[str, str]) -> str:
    for key in ("ss_base_model_version", "modelspec.architecture"):
        if metadata.get(key):
            return metadata[key]
    return "unknown (no metadata)"


def inspect_adapter(path: str | os.PathLike[str], *, norms: bool = True) -> AdapterReport:
    """Read an adapter file and describe it (``norms=False`` skips the deltas)."""
    adapter = read_adapter(path)
    family = naming_family(adapter.metadata, adapter.modules)
    shapes = LayerShapes(family=family)
    modules: list[ModuleInfo] = []
    for name, tensors in progress(adapter.modules.items(), "inspecting", total=len(adapter.modules)):
        dim, alpha = dim_alpha(adapter.network, name, tensors)
        shape: list[int] | None = None
        norm: float | None = None
        if norms:
            try:
                delta, layer_shape = shapes.delta(adapter.network, name, tensors)
                shape, norm = list(layer_shape), float(torch.linalg.vector_norm(delta))
            except ShapeMismatchError:
                pass
        modules.append(ModuleInfo(name, block_label(name, family.blocks), len(tensors), dim, alpha, shape, norm))
    blocks: dict[str, BlockInfo] = {}
    squares: dict[str, float] = {}
    for info in modules:
        block = blocks.setdefault(info.block, BlockInfo(info.block))
        block.modules += 1
        block.keys += info.keys
        block.ranks = sorted({*block.ranks, info.dim})
        block.alphas = sorted({*block.alphas, info.alpha})
        if info.norm is not None:
            squares[info.block] = squares.get(info.block, 0.0) + info.norm**2
    for label, total in squares.items():
        blocks[label].norm = math.sqrt(total)
    return AdapterReport(
        path=str(path),
        network=adapter.network,
        source_format=adapter.source_format,
        network_module=adapter.metadata.get("ss_network_module", get_registry().get(adapter.network).kohya_module),
        base_model=_base_model(adapter.metadata),
        modules=len(modules),
        keys=sum(info.keys for info in modules),
        ranks=sorted({info.dim for info in modules}),
        alphas=sorted({info.alpha for info in modules}),
        blocks=sorted(blocks.values(), key=lambda b: _block_order(b.block)),
        module_list=modules,
        metadata=dict(sorted(adapter.metadata.items())),
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _values(values: list[Any]) -> str:
    return ",".join(_number(v) if isinstance(v, float) else str(v) for v in values)


def format_report(report: AdapterReport) -> str:
    """The human-readable form: summary, one row per block, one per module, the metadata."""
    lines = [
        f"file:          {report.path}",
        f"type:          {report.network} ({report.network_module})",
        f"format:        {report.source_format}",
        f"base model:    {report.base_model}",
        f"modules:       {report.modules} ({report.keys} keys)",
        f"ranks:         {_values(report.ranks)}",
        f"alphas:        {_values(report.alphas)}",
        "",
        f"{'block':<6} {'modules':>7} {'keys':>5}  {'ranks':<12} {'alphas':<12} {'|delta|':>9}",
    ]
    for block in report.blocks:
        lines.append(
            f"{block.block:<6} {block.modules:>7} {block.keys:>5}  {_values(block.ranks):<12} "
            f"{_values(block.alphas):<12} {_number(block.norm):>9}"
        )
    lines += ["", f"{'module':<72} {'block':<6} {'rank':>4} {'alpha':>8} {'|delta|':>9}"]
    for info in report.module_list:
        lines.append(f"{info.name:<72} {info.block:<6} {info.dim:>4} {_number(info.alpha):>8} {_number(info.norm):>9}")
    lines += ["", "metadata:" if report.metadata else "metadata: none"]
    for key, value in report.metadata.items():
        shown = value if len(value) <= LONG_VALUE else f"{value[:LONG_VALUE]}... ({len(value)} characters)"
        lines.append(f"  {key} = {shown}")
    return "\n".join(lines)
