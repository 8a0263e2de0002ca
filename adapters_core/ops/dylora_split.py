"""Split a DyLoRA file into adapters of rank unit, 2*unit, ... (kohya-format.md §5).

DyLoRA trains its rank components in order, so its first k components form a rank-k
adapter by themselves: ``down[:k]``, ``up[:, :k]``, alpha unchanged (the scale becomes
alpha/k, as kohya's ``extract_lora_from_dylora.py`` writes). The file for rank k is
``<stem>-{k:04d}<ext>``; ranks below the file's largest rank are written (that one is the
input itself). Only for files a DyLoRA wrote (``ss_network_module`` is ``networks.dylora``):
the first components of another adapter are no rank-k adapter of it, so any other file is
refused before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapters_core.atomic import check_writable
from adapters_core.errors import ConfigError, FormatError
from adapters_core.formats import precision_dtype
from adapters_core.ops.deltas import progress_bar, read_adapter
from adapters_core.ops.factors import factors_of, first_components
from adapters_core.ops.outputs import ModuleOut, adapter_metadata, write_adapter

DYLORA_MODULE = "networks.dylora"  # the ss_network_module kohya's DyLoRA writes


DYLORA_MODULE = "networks.dylora"  # what kohya's train_network.py records for a DyLoRA


def split_paths(save_to: str | os.PathLike[str], ranks: list[int]) -> list[Path]:
    """``out.safetensors`` -> ``out-0004.safetensors``, ``out-0008.safetensors`` ..."""
    base = Path(save_to)
    return [base.with_name(f"{base.stem}-{k:04d}{base.suffix}") for k in ranks]


def split_dylora(
    model: str | os.PathLike[str],
    *,
    unit: int,
    save_to: str | os.PathLike[str],
    save_precision: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the rank-unit, 2*unit, ... adapters of a DyLoRA file; returns the paths written."""
    if unit < 1:
        raise ConfigError(f"--unit {unit}: must be a positive rank step")
    dtype = precision_dtype(save_precision)
    adapter = read_adapter(model)
    written_by = adapter.metadata.get("ss_network_module")
    if written_by != DYLORA_MODULE:
        recorded = f"'{written_by}'" if written_by else "no ss_network_module"
        raise FormatError(
            f"{model}: not a DyLoRA file (metadata has {recorded}, expected '{DYLORA_MODULE}'); "
            "only a DyLoRA's first components form lower-rank adapters (use adapt resize for others)"
        )
    factors = {}
    for name, tensors in adapter.modules.items():
        found = factors_of(adapter.network, tensors, f"{model}: {name}")
        if found is None:
            raise ConfigError(
                f"{model}: type '{adapter.network}' does not store lora_down/lora_up factors; only a DyLoRA "
                "(kohya LoRA-format) file can be split by rank"
            )
        factors[name] = found
    max_rank = max((f.rank for f in factors.values()), default=0)
    ranks = list(range(unit, max_rank, unit))
    if not ranks:
        raise ConfigError(f"{model}: its largest rank is {max_rank}; --unit {unit} leaves no smaller rank to split")
    paths = split_paths(save_to, ranks)
    for path in paths:
        check_writable(path, overwrite)
    family, v_parameterization = adapter.base
    with progress_bar(len(ranks) * len(factors), "splitting DyLoRA") as bar:
        for k, path in zip(ranks, paths, strict=True):
            outputs = {}
            for name, tensors in adapter.modules.items():
                outputs[name] = ModuleOut(first_components(tensors, k), factors[name].weight_shape)
                bar.update()
            metadata = adapter_metadata(
                outputs,
                adapter.network,
                family=family,
                v_parameterization=v_parameterization,
                title=path.stem,
                base=adapter.metadata,
                comment=f"split from DyLoRA, rank {max_rank} to {k}",
            )
            metadata["ss_network_dim"] = str(k)
            write_adapter(path, outputs, metadata, dtype=dtype, overwrite=overwrite)
    return paths
