"""``adapt merge --sd_model FOLDER --save_to FOLDER``: a Diffusers folder merged tensor by tensor.

Each weighted component (the family's adaptable ones and the VAE) is read from its
safetensors file (or shards) through a memory map and written with the per-tensor rule of
:mod:`adapters_core.ops.merge_tensors` into one safetensors file of the same name, so memory
holds the tensors in flight, not the model. A parameter's layer is found by building the
components on "meta" from the folder's configs (:func:`loadable_targets`: each target's
module path in its component). The other component folders (tokenizers, scheduler, a safety
checker) and ``model_index.json`` are copied file for file.

The tensors written are those the loaded-model path writes (``load_sd_model``, merge in
place, ``save_pretrained``): the component's state-dict keys under the file's own spelling,
cast alike. A folder this cannot mirror (pickled ``.bin`` weights, keys the libraries would
rename on load) gives ``None`` and is merged by loading it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from adapters_core.atomic import atomic_path
from adapters_core.errors import ModelLoadError
from adapters_core.family import ModelFamily
from adapters_core.matching import loadable_targets
from adapters_core.ops.deltas import Adapter
from adapters_core.ops.merge_tensors import check_coverage, saved_bytes, write_merged_file, writer_threads
from adapters_core.ops.streaming import (
    CheckpointReader,
    SafetensorsReader,
    ShardedReader,
)
from adapters_core.progress import progress_bar
from adapters_core.targets import layer_weight
from adapters_core.textfiles import read_json

WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")  # Diffusers', transformers'
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")
VAE = "vae"
SAVED_METADATA = {"format": "pt"}  # what save_pretrained writes


@dataclass
class ComponentStream:
    """One weighted component folder and how its tensors are written."""

    folder: str
    weights_name: str
    reader: CheckpointReader
    keys: dict[str, str]  # file key -> the component's state-dict key, in file order; others are left out
    layers: dict[str, str]  # state-dict key -> kohya module name of the layer whose weight it is


def merge_folder_streaming(
    source: Path,
    target: Path,
    family: ModelFamily,
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    v_parameterization: bool | None,
    overwrite: bool,
    allow_unmatched: bool,
) -> Path | None:
    """Merge into the Diffusers folder ``source`` of ``family`` and write the folder ``target``;
    ``None`` (nothing done) when the folder's weights cannot be streamed."""
    modules = _meta_components(source, family)
    if modules is None:
        return None
    targets = loadable_targets(family, modules)
    with contextlib.ExitStack() as stack:
        streams = _open_streams(source, modules, stack)
        if streams is None:
            return None
        for found in targets:
            streams[found.component].layers[f"{found.module_path}.weight"] = found.name
        check_coverage(adapters, {t.name: layer_weight(t.layer).shape for t in targets}, source, allow_unmatched)
        expected = sum(saved_bytes(stream.reader, stream.keys, save_dtype) for stream in streams.values())
        with atomic_path(target, overwrite, expected_bytes=expected) as tmp, writer_threads():
            _copy_other_files(source, tmp, set(streams))
            if v_parameterization is not None:
                _set_prediction_type(tmp, v_parameterization)
            with progress_bar(expected, "merging", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                for name, stream in streams.items():
                    _write_component(tmp / name, stream, adapters, ratios, merge_dtype, save_dtype, bar)
    return target


def _meta_components(source: Path, family: ModelFamily) -> dict[str, nn.Module] | None:
    """The adaptable components and the VAE of the folder, built on "meta" from its configs."""
    from diffusers import AutoencoderKL

    modules = family.build_components(device="meta", folder=source)
    try:
        config = AutoencoderKL.load_config(source / VAE)
    except (OSError, ValueError):
        return None  # loading the folder reports it
    with torch.device("meta"):
        modules[VAE] = AutoencoderKL.from_config(config)
    return modules


def _open_streams(
    source: Path, modules: Mapping[str, nn.Module], stack: contextlib.ExitStack
) -> dict[str, ComponentStream] | None:
    streams: dict[str, ComponentStream] = {}
    for name, module in modules.items():
        opened = open_weights(source / name)
        if opened is None:
            return None
        weights_name, reader = opened
        stack.callback(reader.close)
        keys = state_dict_spelling(module, reader)
        if keys is None:
            return None
        streams[name] = ComponentStream(name, weights_name, reader, keys, {})
    return streams


def open_weights(folder: Path) -> tuple[str, CheckpointReader] | None:
    """The component's safetensors weights (one file, or shards named by an index), as
    ``from_pretrained`` picks them without a variant; ``None`` for pickled or missing weights."""
    for name in WEIGHTS_NAMES:
        if (folder / name).is_file():
            return name, SafetensorsReader(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            data = read_json(index, str(index), ModelLoadError)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
            if not shards or not all((folder / shard).is_file() for shard in shards):
                return None
            return name, ShardedReader([SafetensorsReader(folder / shard) for shard in shards])
    return None


def state_dict_spelling(module: nn.Module, reader: CheckpointReader) -> dict[str, str] | None:
    """File key -> ``module``'s state-dict key for every key the module has, in file order.

    transformers reads ``text_model.``-prefixed files into models without that level and
    writes the prefix back; any prefix shared by all keys is taken the same way. ``None`` when
    the file lacks a key or a shape differs (the libraries would convert it: load instead).
    """
    wanted = {key: tensor.shape for key, tensor in module.state_dict().items()}
    present = set(reader)
    first = next(iter(reader), "")
    for prefix in dict.fromkeys(("", first.split(".")[0] + ".")):
        spelled = {prefix + key: key for key in wanted}
        if all(key in present and reader.shape(key) == wanted[own] for key, own in spelled.items()):
            return {key: spelled[key] for key in reader if key in spelled}
    return None


def _write_component(
    folder: Path,
    stream: ComponentStream,
    adapters: Sequence[Adapter],
    ratios: Sequence[float],
    merge_dtype: torch.dtype,
    save_dtype: torch.dtype,
    bar: tqdm,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    layers = {key: [stream.layers[own]] if own in stream.layers else [] for key, own in stream.keys.items()}
    write_merged_file(
        folder / stream.weights_name, stream.reader, layers, adapters, ratios, merge_dtype, save_dtype,
        SAVED_METADATA, bar, label=lambda key: f"{stream.folder}/{key}",
    )


def _copy_other_files(source: Path, target: Path, streamed: set[str]) -> None:
    """``model_index.json`` and the folders it names, without the weights of the streamed ones
    (a stale variant such as ``diffusion_pytorch_model.fp16.safetensors`` would not be merged)."""
    target.mkdir(parents=True)
    shutil.copyfile(source / "model_index.json", target / "model_index.json")
    index = read_json(source / "model_index.json", str(source / "model_index.json"), ModelLoadError)
    for name in index:
        if not name.startswith("_") and (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=_weight_files if name in streamed else None)


def _weight_files(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if name.endswith(WEIGHT_SUFFIXES)]


def _set_prediction_type(folder: Path, v_parameterization: bool) -> None:
    """``--v_parameterization`` given: the scheduler's ``prediction_type`` says what was given."""
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        return
    config = read_json(config_file, str(config_file), ModelLoadError)
    config["prediction_type"] = "v_prediction" if v_parameterization else "epsilon"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
