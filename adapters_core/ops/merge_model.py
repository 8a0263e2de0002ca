"""``adapt merge --sd_model``: fold adapters into a checkpoint (kohya-format.md §6).

Every adapted weight becomes ``merge_weights(W, module, ratio)`` of each adapter in turn
(``W + ratio * delta`` for additive types), in ``precision``, then ``save_precision``.

A single-file checkpoint written as a single file is streamed tensor by tensor: each LDM
key is mapped to the kohya module(s) it holds (SD2's fused ``in_proj`` holds q, k and v),
merged and written, so memory holds about one tensor, not the model. Diffusers folders,
and conversions between the layouts, load the model once and merge in place.
Every module is checked against its layer's shape (a dry run on the "meta" device) before
anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from adapters_core.atomic import atomic_path, check_writable
from adapters_core.choices import CHECKPOINT_OUTPUT_SUFFIXES
from adapters_core.errors import FormatError, ModelLoadError, NonFiniteError, ShapeMismatchError
from adapters_core.formats import precision_dtype
from adapters_core.matching import UnmatchedKeysError, loadable_targets
from adapters_core.metadata import modelspec_metadata
from adapters_core.ops.deltas import Adapter, layer_weight, log, progress, progress_bar, read_adapters, resolve_ratios
from adapters_core.ops.streaming import SafetensorsWriter, open_checkpoint, reused_heap
from adapters_core.plugins import get_registry

_MANY_LAYERS = 1 << 20  # keep every text-encoder layer of the file when mapping names


def merge_module(
    adapter: Adapter, name: str, weight: torch.Tensor, ratio: float, *, check_finite: bool = True
) -> torch.Tensor:
    """One module merged into ``weight`` through the type's ``merge_weights`` hook (at ``ratio`` times
    the module's block multiplier).

    ``check_finite=False`` leaves the NaN/inf check to the caller (see :func:`require_finite`),
    who checks the tensor it saves once, after every adapter and the cast to the save dtype.
    """
    try:
        merged = get_registry().merge_weights(adapter.network, adapter.modules[name], weight, adapter.ratio(ratio, name))
    except KeyError as missing:
        raise FormatError(f"{adapter.path}: {name} lacks the tensor {missing}") from None
    if check_finite:
        require_finite(merged, f"{adapter.path}: {name}")
    return merged


def require_finite(tensor: torch.Tensor, what: str) -> None:
    """Refuse NaN/inf (they reach the sum: one pass, no mask), naming the dtype they appear in."""
    if not torch.isfinite(tensor.sum(dtype=torch.float32)):
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise NonFiniteError(f"{what}: merging gives non-finite weights in {dtype}; nothing was written")


def check_fits(adapter: Adapter, name: str, shape: torch.Size, source: Path) -> None:
    """Refuse a module that does not fit its layer, computing nothing (tensors on "meta").

    A type whose hook cannot run on "meta" is checked once for real before it is blamed.
    """
    merge = get_registry().merge_weights
    tensors = adapter.modules[name]
    on_meta = {k: v if v.dim() == 0 else v.to("meta") for k, v in tensors.items()}
    try:
        merge(adapter.network, on_meta, torch.empty(shape, device="meta"), 1.0)
        return
    except Exception:  # noqa: BLE001 - any failure is confirmed below with real tensors
        pass
    try:
        merge(adapter.network, tensors, torch.zeros(shape), 1.0)
    except KeyError as missing:
        raise FormatError(f"{adapter.path}: {name} lacks the tensor {missing}") from None
    except (RuntimeError, ValueError, ShapeMismatchError) as error:
        detail = " ".join(str(error).split())[:160]
        raise ShapeMismatchError(
            f"{adapter.path}: {name} does not fit the layer of shape {tuple(shape)} in {source} "
            f"(an adapter for another base model?): {detail}"
        ) from None


def check_coverage(
    adapters: Sequence[Adapter], layers: Mapping[str, torch.Size], source: Path, allow_unmatched: bool = False
) -> None:
    """Every module must name a layer of the model; with ``allow_unmatched`` the others are
    listed in a warning and skipped."""
    for adapter in adapters:
        missing = [name for name in adapter.modules if name not in layers]
        if len(missing) == len(adapter.modules):
            raise ShapeMismatchError(
                f"{adapter.path}: none of its {len(missing)} modules names a layer of {source}; "
                "is it an adapter for another kind of model?"
            )
        if missing and not allow_unmatched:
            raise UnmatchedKeysError(
                f"{adapter.path}: {len(missing)} modules name no layer of {source} (e.g. {missing[0]}); "
                "`adapt check` lists them, --allow_unmatched merges the rest"
            )
        if missing:
            log.warning("%s: %d modules name no layer of %s and are skipped: %s",
                        adapter.path, len(missing), source, ", ".join(missing))
        for name in adapter.modules:
            if name in layers:
                check_fits(adapter, name, layers[name], source)


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
        return _merge_loaded(
            source, target, adapters, ratios, merge_dtype, save_dtype, family, v_parameterization, titles, overwrite,
            allow_unmatched,
        )


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Compute with ``count`` threads (at least 1): the writer thread gets a core of its own."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cast(tensor: torch.Tensor, merge_dtype: torch.dtype, save_dtype: torch.dtype) -> torch.Tensor:
    """An unmerged tensor in the save dtype, rounded through the merge dtype when that is narrower."""
    if not tensor.is_floating_point():
        return tensor
    if merge_dtype != torch.float32 and tensor.dtype != merge_dtype:
        tensor = tensor.to(merge_dtype)
    return tensor.to(save_dtype)


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
        wanted = {name for adapter in adapters for name in adapter.modules}
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
            held = names.get(key, [])
            if not any(name in wanted for name in held):
                return _cast(reader[key], merge_dtype, save_dtype)
            parts = list(reader[key].to(merge_dtype).chunk(len(held), dim=0))
            for i, name in enumerate(held):
                for adapter, ratio in zip(adapters, ratios, strict=True):
                    if name in adapter.modules:
                        parts[i] = merge_module(adapter, name, parts[i], ratio, check_finite=False)
            result = (torch.cat(parts) if len(parts) > 1 else parts[0]).to(save_dtype)
            # checked as saved: fewer bytes than the merge dtype, and an overflow of the cast is caught
            require_finite(result, f"{', '.join(str(a.path) for a in adapters)}: {key}")
            return result

        keys = list(reader)
        with atomic_path(target, overwrite) as tmp, _threads(torch.get_num_threads() - 1):
            if target.suffix.lower() == ".safetensors":
                specs = [
                    (k, save_dtype if reader.dtype(k).is_floating_point else reader.dtype(k), reader.shape(k))
                    for k in keys
                ]
                with SafetensorsWriter(tmp, specs, metadata, after_write=reader.release) as writer:
                    for key in progress(keys, "merging", unit="tensor"):
                        writer.write(key, merged(key))
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
