"""``adapt merge --sd_model``: fold adapters into a checkpoint (kohya-format.md §6).

Every adapted weight becomes ``merge_weights(W, module, ratio)`` of each adapter in turn
(``W + ratio * delta`` for additive types), in ``precision``, then ``save_precision``
(one rule: :mod:`adapters_core.ops.merge_tensors`).

A single file written as a single file, and a Diffusers folder written as a folder
(:mod:`adapters_core.ops.merge_folder`), are streamed tensor by tensor: each key is mapped
to the kohya module(s) it holds (SD2's fused ``in_proj`` holds q, k and v), merged and
written, so memory holds a few tensors, not the model; tensors no adapter touches are copied
file to file by the kernel meanwhile. Conversions between the layouts, and folders with
pickled weights, load the model once and merge in place.
Every module is checked against its layer's shape before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from adapters_core.atomic import atomic_path, check_writable
from adapters_core.choices import CHECKPOINT_OUTPUT_SUFFIXES
from adapters_core.errors import ModelLoadError
from adapters_core.formats import precision_dtype
from adapters_core.matching import loadable_targets
from adapters_core.metadata import modelspec_metadata
from adapters_core.ops.deltas import Adapter, log, progress, progress_bar, read_adapters, resolve_ratios
from adapters_core.ops.merge_folder import merge_folder_streaming
from adapters_core.ops.merge_tensors import (
    check_coverage,
    merge_module,
    merge_tensor,
    require_finite,
    saved_bytes,
    write_merged_file,
    writer_threads,
)
from adapters_core.ops.streaming import open_checkpoint, reused_heap
from adapters_core.targets import layer_weight


def merge_into_model(
    sd_model: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str]],
    ratios: Sequence[float] | None = None,
    *,
    save_to: str | os.PathLike[str],
    precision: str = "float",
    save_precision: str | None = None,
    family: str | None = None,
    v_parameterization: bool | None = None,
    overwrite: bool = False,
    allow_unmatched: bool = False,
    block_weights: Sequence[str] = (),
) -> Path:
    """Merge adapter files into the checkpoint ``sd_model`` and write ``save_to``.

    ``save_to`` ending in ``.safetensors``/``.ckpt`` is a single file in the model family's
    original layout, anything else a Diffusers folder. The family is detected (``family``, if
    given, must match). Returns the path written.
    """
    check_writable(save_to, overwrite)
    merge_dtype = precision_dtype(precision, "--precision") or torch.float32
    save_dtype = precision_dtype(save_precision) or merge_dtype
    adapters = read_adapters(models, block_weights)
    ratios = resolve_ratios(len(adapters), ratios)
    source, target = Path(sd_model), Path(save_to)
    if not source.exists():
        raise ModelLoadError(f"{source}: no such file or folder; expected a checkpoint or a Diffusers model folder")
    titles = [source.stem] + [a.title for a in adapters]
    with reused_heap():
        if source.is_file() and target.suffix.lower() in CHECKPOINT_OUTPUT_SUFFIXES:
            return _merge_streaming(
                source, target, adapters, ratios, merge_dtype, save_dtype, family, bool(v_parameterization), titles,
                overwrite, allow_unmatched,
            )
        if source.is_dir() and target.suffix.lower() not in CHECKPOINT_OUTPUT_SUFFIXES:
            from adapters_core.models.loader import check_family, detect_family  # diffusers: not at import time

            found = detect_family(source)
            check_family(source, family, found)
            streamed = merge_folder_streaming(
                source, target, found, adapters, ratios, merge_dtype, save_dtype, v_parameterization, overwrite,
                allow_unmatched,
            )
            if streamed is not None:
                return streamed
        return _merge_loaded(
            source, target, adapters, ratios, merge_dtype, save_dtype, family, v_parameterization, titles, overwrite,
            allow_unmatched,
        )


def _merge_streaming(
    source: Path,
    target: Path,
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    family: str | None,
    v_parameterization: bool,
    titles: list[str],
    overwrite: bool,
    allow_unmatched: bool,
) -> Path:
    from adapters_core.models.loader import check_family, family_of_checkpoint

    reader = open_checkpoint(source)
    try:
        shapes = {key: torch.empty(reader.shape(key), device="meta") for key in reader}
        found = family_of_checkpoint(shapes, source)
        check_family(source, family, found)
        names = found.checkpoint_module_keys(shapes, v_parameterization)
        layers: dict[str, torch.Size] = {}
        for key, held in names.items():
            shape = reader.shape(key)
            for name in held:
                layers[name] = torch.Size((shape[0] // len(held), *shape[1:]))
        check_coverage(adapters, layers, source, allow_unmatched)
        metadata = modelspec_metadata(
            family=found, v_parameterization=v_parameterization, title=target.stem, kind="", merged_from=titles
        )

        def merged(key: str) -> torch.Tensor:
            return merge_tensor(key, reader[key], names.get(key, []), adapters, ratios, merge_dtype, save_dtype)

        keys = list(reader)
        with atomic_path(target, overwrite) as tmp, writer_threads():
            if target.suffix.lower() == ".safetensors":
                holds = {key: names.get(key, []) for key in keys}
                total = saved_bytes(reader, keys, save_dtype)
                with progress_bar(total, "merging", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                    write_merged_file(tmp, reader, holds, adapters, ratios, merge_dtype, save_dtype, metadata, bar)
            else:
                torch.save({"state_dict": {key: merged(key) for key in progress(keys, "merging", unit="tensor")}}, tmp)
    finally:
        reader.close()
    return target


def _merge_loaded(
    source: Path,
    target: Path,
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    family: str | None,
    v_parameterization: bool | None,
    titles: list[str],
    overwrite: bool,
    allow_unmatched: bool,
) -> Path:
    from adapters_core.models import load_sd_model, save_diffusers, save_single_file

    model = load_sd_model(
        source, family=family, v_parameterization=v_parameterization, dtype=merge_dtype, need_tokenizer=False
    )
    targets = {t.name: t.layer for t in loadable_targets(model.family, model.components)}
    check_coverage(adapters, {name: layer_weight(layer).shape for name, layer in targets.items()}, source, allow_unmatched)
    jobs = [(a, r, name) for a, r in zip(adapters, ratios, strict=True) for name in a.modules if name in targets]
    with torch.no_grad(), progress_bar(len(jobs), "merging") as bar:
        for adapter, ratio, name in jobs:
            weight = layer_weight(targets[name])
            merged = merge_module(adapter, name, weight, ratio, check_finite=False)
            require_finite(merged.to(save_dtype), f"{adapter.path}: {name}")  # as it will be saved
            weight.copy_(merged)
            bar.update()
    if target.suffix.lower() in CHECKPOINT_OUTPUT_SUFFIXES:
        metadata = modelspec_metadata(
            family=model.family, v_parameterization=model.v_parameterization, title=target.stem, kind="",
            merged_from=titles,
        )
        template = source if source.is_file() else None
        return save_single_file(
            model, target, dtype=save_dtype, template=template, overwrite=overwrite, metadata=metadata
        )
    for module in model.modules():
        if module.dtype != save_dtype:
            module.to(save_dtype)
    if model.tokenizer is None:
        log.warning("%s: no tokenizer found for %s; the Diffusers folder is written without one", target, source)
    return save_diffusers(model, target, overwrite=overwrite)
