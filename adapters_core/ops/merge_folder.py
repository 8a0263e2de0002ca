"""``adapt merge --sd_model FOLDER --save_to FOLDER``: a Diffusers folder merged tensor by tensor.

Each weighted component (the family's adaptable ones and the VAE) is read from its
safetensors file (or shards) through a memory map and written with the per-tensor rule of
:mod:`adapters_core.ops.merge_tensors` into one safetensors file of the same name, so memory
holds the tensors in flight, not the model. A parameter's layer comes from a layer table
(each layer's module path in its component, and each component's state-dict keys): the
family's own (shipped as data for the built-in families: no model library is imported) when
the folder's files hold exactly its keys and shapes, else one made by building the
components on "meta" from the folder's configs. The other component folders (tokenizers,
scheduler, a safety checker) and ``model_index.json`` are copied file for file.

The tensors written are those the loaded-model path writes (``load_sd_model``, merge in
place, ``save_pretrained``): the component's state-dict keys under the file's own spelling,
cast alike. A folder this cannot mirror (pickled ``.bin`` weights, keys the libraries would
rename on load) gives ``None`` and is merged by loading it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from adapters_core.atomic import atomic_path
from adapters_core.errors import ModelLoadError
from adapters_core.family import ModelFamily
from adapters_core.layer_table import LayerTable, StateDictShapes, bundled_layer_table
from adapters_core.ops.deltas import Adapter
from adapters_core.ops.merge_tensors import check_coverage, saved_bytes, write_merged_file, writer_threads
from adapters_core.ops.streaming import (
    CheckpointReader,
    SafetensorsReader,
    ShardedReader,
)
from adapters_core.progress import progress_bar
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
    with contextlib.ExitStack() as stack:
        found = _table_and_streams(source, family, stack)
        if found is None:
            return None
        table, streams = found
        for row in table.rows:
            streams[row.component].layers[f"{row.module_path}.weight"] = row.name
        shapes = {name: torch.Size(shape) for name, shape in table.shapes.items()}
        check_coverage(adapters, shapes, source, allow_unmatched)
        expected = sum(saved_bytes(stream.reader, stream.keys, save_dtype) for stream in streams.values())
        with atomic_path(target, overwrite, expected_bytes=expected) as tmp, writer_threads():
            _copy_other_files(source, tmp, set(streams))
            if v_parameterization is not None:
                _set_prediction_type(tmp, v_parameterization)
            with progress_bar(expected, "merging", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                for name, stream in streams.items():
                    _write_component(tmp / name, stream, adapters, ratios, merge_dtype, save_dtype, bar)
    return target


def weighted_components(family: ModelFamily, folder: Path | None = None) -> dict[str, nn.Module]:
    """The components a Diffusers folder of ``family`` holds weights for (the adaptable ones
    and the VAE), built on "meta" from ``folder``'s configs, or the family's bundled ones."""
    from diffusers import AutoencoderKL

    modules = family.build_components(device="meta", folder=folder)
    config = family.config(VAE) if folder is None else AutoencoderKL.load_config(folder / VAE)
    with torch.device("meta"):
        modules[VAE] = AutoencoderKL.from_config(config)
    return modules


def _table_and_streams(
    source: Path, family: ModelFamily, stack: contextlib.ExitStack
) -> tuple[LayerTable, dict[str, ComponentStream]] | None:
    """The family's layer table where the folder's files hold exactly its keys (the bundled
    model's architecture), else one built from the folder's configs; with a stream per component."""
    shipped = bundled_layer_table(family.name)
    streams = _open_streams(source, shipped, stack, exact=True)
    if streams is not None:
        return shipped, streams
    built = _built_table(source, family)
    streams = None if built is None else _open_streams(source, built, stack, exact=False)
    return None if built is None or streams is None else (built, streams)


def _built_table(source: Path, family: ModelFamily) -> LayerTable | None:
    try:
        return LayerTable.of(family, weighted_components(family, source))
    except (OSError, ValueError):
        return None  # an unreadable VAE config: loading the folder reports it


def _open_streams(
    source: Path, table: LayerTable, stack: contextlib.ExitStack, *, exact: bool
) -> dict[str, ComponentStream] | None:
    """A stream per component of ``table.state_dicts`` (the adaptable ones and the VAE);
    ``None`` when a component's files do not hold its keys (``exact``: nothing more either)."""
    components = {row.component for row in table.rows} | {VAE}
    if not components <= set(table.state_dicts):
        return None
    streams: dict[str, ComponentStream] = {}
    with contextlib.ExitStack() as opened:
        for name in sorted(table.state_dicts):
            found = open_weights(source / name)
            if found is None:
                return None
            weights_name, reader = found
            opened.callback(reader.close)
            keys = state_dict_spelling(table.state_dicts[name], reader, exact=exact)
            if keys is None:
                return None
            streams[name] = ComponentStream(name, weights_name, reader, keys, {})
        stack.push(opened.pop_all())
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


def state_dict_spelling(wanted: StateDictShapes, reader: CheckpointReader, *, exact: bool = False) -> dict[str, str] | None:
    """File key -> state-dict key for every key of ``wanted`` (a component's state-dict
    shapes), in file order.

    transformers reads ``text_model.``-prefixed files into models without that level and
    writes the prefix back; any prefix shared by all keys is taken the same way. ``None`` when
    the file lacks a key or a shape differs (the libraries would convert it: load instead),
    and with ``exact`` when it holds any other key.
    """
    present = set(reader)
    first = next(iter(reader), "")
    for prefix in dict.fromkeys(("", first.split(".")[0] + ".")):
        spelled = {prefix + key: key for key in wanted}
        if all(key in present and tuple(reader.shape(key)) == tuple(wanted[own]) for key, own in spelled.items()):
            if exact and len(present) != len(spelled):
                return None
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
