"""Writing the tools' adapter files: tensors by module, kohya metadata carried forward.

Ranks and alphas recorded in the metadata are read back from the written modules (through
``module_options_from_tensors``), so they are true for every type: one value when all
Linear/1x1 modules agree, else ``"Dynamic"`` as kohya writes; 3x3 convs go to
``ss_network_args`` ``conv_dim``/``conv_alpha``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters_core.family import ModelFamily
from adapters_core.formats import save_adapter
from adapters_core.metadata import modelspec_metadata, network_metadata
from adapters_core.ops.deltas import ModuleTensors, dim_alpha, is_conv3x3
from adapters_core.plugins import get_registry

DYNAMIC = "Dynamic"
# network_args that describe the rank layout, rewritten from the modules actually written
RANK_LAYOUT_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "conv_dim", "conv_alpha")


@dataclass
class ModuleOut:
    """One written module: its module-relative tensors and its layer's weight shape."""

    tensors: ModuleTensors
    weight_shape: torch.Size


def uniform(values: Sequence[Any]) -> Any:
    """The common value, ``"Dynamic"`` when they differ, ``None`` when there are none."""
    distinct = set(values)
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else DYNAMIC


def rank_summary(outputs: Mapping[str, ModuleOut], network: str) -> dict[str, Any]:
    """``dim``/``alpha`` of Linear and 1x1 modules, ``conv_dim``/``conv_alpha`` of 3x3 convs."""
    linear: list[tuple[int, float]] = []
    conv: list[tuple[int, float]] = []
    for name, out in outputs.items():
        (conv if is_conv3x3(out.weight_shape) else linear).append(dim_alpha(network, name, out.tensors))
    return {
        "dim": uniform([d for d, _ in linear]),
        "alpha": uniform([a for _, a in linear]),
        "conv_dim": uniform([d for d, _ in conv]),
        "conv_alpha": uniform([a for _, a in conv]),
    }


def _network_args(base: Mapping[str, str], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The input's ``ss_network_args`` with the rank-layout entries replaced by the output's."""
    try:
        args = json.loads(base.get("ss_network_args", "{}"))
    except json.JSONDecodeError:
        args = {}
    args = {k: v for k, v in (args if isinstance(args, dict) else {}).items() if k not in RANK_LAYOUT_ARGS}
    if summary["conv_dim"] is not None:
        args["conv_dim"] = summary["conv_dim"]
        args["conv_alpha"] = summary["conv_alpha"]
    return args


def adapter_metadata(
    outputs: Mapping[str, ModuleOut],
    network: str,
    *,
    family: ModelFamily,
    v_parameterization: bool,
    title: str,
    base: Mapping[str, str] | None = None,
    merged_from: Sequence[str] | None = None,
    comment: str | None = None,
) -> dict[str, str]:
    """Metadata of a tool's output: ``base`` (the input's, for one-input tools) without its old
    hashes, kohya's network keys recomputed, fresh ``modelspec.*``, an optional comment.
    ``save_adapter`` adds the new ``sshs_*`` hashes."""
    base = dict(base or {})
    summary = rank_summary(outputs, network)
    meta = {k: v for k, v in base.items() if not k.startswith("sshs_") and k != "ss_network_args"}
    meta.update(
        network_metadata(
            network_module=get_registry().get(network).kohya_module or network,
            dim=summary["dim"] if summary["dim"] is not None else summary["conv_dim"],
            alpha=summary["alpha"] if summary["alpha"] is not None else summary["conv_alpha"],
            network_args=_network_args(base, summary) or None,
            family=family,
            v_parameterization=v_parameterization,
        )
    )
    meta.update(
        modelspec_metadata(family=family, v_parameterization=v_parameterization, title=title, merged_from=merged_from)
    )
    if comment:
        meta["ss_training_comment"] = comment
    return meta


def write_adapter(
    path: str | os.PathLike[str],
    outputs: Mapping[str, ModuleOut],
    metadata: Mapping[str, str],
    *,
    dtype: torch.dtype | None,
    overwrite: bool,
) -> Path:
    """Write the modules under their kohya names, atomically, with hashes."""
    tensors = {f"{name}.{key}": t for name, out in outputs.items() for key, t in out.tensors.items()}
    return save_adapter(path, tensors, metadata=metadata, dtype=dtype, overwrite=overwrite)
