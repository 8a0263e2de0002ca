"""The per-tensor rule of ``adapt merge --sd_model``, shared by every checkpoint layout.

A checkpoint tensor that holds adapted layers becomes ``merge_weights(W, module, ratio)`` of
each adapter in turn, in the merge dtype, then the save dtype, and is refused if that holds
NaN/inf; any other tensor is only cast. The single-file stream, the Diffusers-folder stream
and the in-memory merge all go through these functions, so they write the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adapters_core.errors import FormatError, NonFiniteError, ShapeMismatchError
from adapters_core.finite import all_finite
from adapters_core.matching import UnmatchedKeysError
from adapters_core.ops.deltas import Adapter, log
from adapters_core.ops.factors import factors_of
from adapters_core.ops.streaming import CheckpointReader, SafetensorsWriter, TensorSpec, spec_bytes
from adapters_core.plugins import get_registry

if TYPE_CHECKING:
    from tqdm import tqdm


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
    """Refuse NaN/inf, naming the dtype they appear in."""
    if not all_finite(tensor):
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise NonFiniteError(f"{what}: merging gives non-finite weights in {dtype}; nothing was written")


def saved_as_is(dtype: torch.dtype, merge_dtype: torch.dtype, save_dtype: torch.dtype) -> bool:
    """Whether :func:`cast_unmerged` leaves a tensor of ``dtype`` as it is (its bytes can be copied)."""
    if not dtype.is_floating_point:
        return True
    return dtype == save_dtype and (merge_dtype == torch.float32 or dtype == merge_dtype)


def is_adapted(names: Sequence[str], adapters: Sequence[Adapter]) -> bool:
    """Whether any adapter has a module for one of the layers a checkpoint tensor holds."""
    return any(name in adapter.modules for adapter in adapters for name in names)


def cast_unmerged(tensor: torch.Tensor, merge_dtype: torch.dtype, save_dtype: torch.dtype) -> torch.Tensor:
    """An unmerged tensor in the save dtype, rounded through the merge dtype when that is narrower."""
    if saved_as_is(tensor.dtype, merge_dtype, save_dtype):
        return tensor
    if merge_dtype != torch.float32 and tensor.dtype != merge_dtype:
        tensor = tensor.to(merge_dtype)
    return tensor.to(save_dtype)


def merge_tensor(
    key: str,
    tensor: torch.Tensor,
    names: Sequence[str],
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    *,
    check_finite: bool = True,
) -> torch.Tensor:
    """The saved form of checkpoint tensor ``key``, which holds the layers ``names`` (kohya module
    names, several along dim 0 for a fused q/k/v projection; none for a tensor of no layer).

    ``check_finite=False`` leaves the NaN/inf check of a merged tensor to the caller
    (:func:`merged_check`)."""
    if not is_adapted(names, adapters):
        return cast_unmerged(tensor, merge_dtype, save_dtype)
    parts = list(tensor.to(merge_dtype).chunk(len(names), dim=0))
    for i, name in enumerate(names):
        for adapter, ratio in zip(adapters, ratios, strict=True):
            if name in adapter.modules:
                parts[i] = merge_module(adapter, name, parts[i], ratio, check_finite=False)
    result = (torch.cat(parts) if len(parts) > 1 else parts[0]).to(save_dtype)
    if check_finite:
        merged_check(key, adapters)(result)
    return result


def merged_check(key: str, adapters: Sequence[Adapter]) -> Callable[[torch.Tensor], None]:
    """The NaN/inf check of merged tensor ``key``, run on the tensor as saved: fewer bytes than
    the merge dtype, and an overflow of the cast is caught."""
    return functools.partial(require_finite, what=f"{', '.join(str(a.path) for a in adapters)}: {key}")


def write_merged_file(
    path: Path,
    reader: CheckpointReader,
    layers: Mapping[str, Sequence[str]],
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    metadata: Mapping[str, str],
    bar: tqdm,
    label: Callable[[str], str] = str,
) -> None:
    """Write the safetensors file ``path``: each tensor ``layers`` lists (checkpoint key -> the
    layers it holds, in the order the file lays them out) as :func:`merge_tensor` gives it.

    Tensors no adapter touches, saved in their own dtype, are queued first as file-to-file
    copies, which the writer's thread makes while this one computes the merged tensors; a
    merged tensor's NaN/inf check runs on that thread too. ``bar`` counts the bytes written;
    ``label`` names a key in errors.
    """
    specs = saved_specs(reader, layers, save_dtype)
    sizes = {spec[0]: spec_bytes(spec) for spec in specs}

    def written(key: str) -> None:
        reader.release(key)
        bar.update(sizes[key])

    adapted = {key for key, names in layers.items() if is_adapted(names, adapters)}
    with SafetensorsWriter(path, specs, metadata, after_write=written) as writer:
        computed = [
            key
            for key in layers
            if key in adapted or not saved_as_is(reader.dtype(key), merge_dtype, save_dtype) or not writer.copy(key, reader)
        ]
        for key in computed:
            tensor = merge_tensor(key, reader[key], layers[key], adapters, ratios, merge_dtype, save_dtype, check_finite=False)
            writer.write(key, tensor, check=merged_check(label(key), adapters) if key in adapted else None)


def saved_specs(reader: CheckpointReader, keys: Iterable[str], save_dtype: torch.dtype) -> list[TensorSpec]:
    """Name, dtype and shape of each tensor as :func:`merge_tensor`/:func:`cast_unmerged` give it."""
    return [
        (key, save_dtype if reader.dtype(key).is_floating_point else reader.dtype(key), reader.shape(key))
        for key in keys
    ]


def saved_bytes(reader: CheckpointReader, keys: Iterable[str], save_dtype: torch.dtype) -> int:
    """How many bytes the tensors ``keys`` take as :func:`saved_specs` gives them."""
    return sum(map(spec_bytes, saved_specs(reader, keys, save_dtype)))


def check_fits(adapter: Adapter, name: str, shape: torch.Size, source: Path) -> None:
    """Refuse a module that does not fit its layer, computing nothing.

    kohya LoRA factors tell their delta's shape (``[out, r] @ [r, in*kh*kw]``); any other type's
    hook runs on "meta" tensors (which costs torch's one-off import of its compiler stack: the
    factor check keeps ``adapt merge`` from paying it), and a type whose hook cannot run on
    "meta" is checked once for real before it is blamed.
    """
    tensors = adapter.modules[name]
    factors = factors_of(adapter.network, tensors, f"{adapter.path}: {name}")
    if factors is not None:
        if factors.up.shape[0] == shape[0] and factors.down.shape[1] == shape[1:].numel():
            return
        _refuse_shape(adapter, name, shape, source, f"its factors give a {tuple(factors.weight_shape)} delta")
    merge = get_registry().merge_weights
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
        _refuse_shape(adapter, name, shape, source, " ".join(str(error).split())[:160])


def _refuse_shape(adapter: Adapter, name: str, shape: torch.Size, source: Path, detail: str) -> None:
    raise ShapeMismatchError(
        f"{adapter.path}: {name} does not fit the layer of shape {tuple(shape)} in {source} "
        f"(an adapter for another base model?): {detail}"
    )


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


@contextlib.contextmanager
def writer_threads() -> Iterator[None]:
    """Compute with one torch thread fewer (at least 1): the writer thread gets a core of its own."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, previous - 1))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
