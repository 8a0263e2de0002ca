"""One suffix rule and one reader behind every command that reads weights: adapters
(``load_adapter``), whole checkpoints (``read_checkpoint``) and the streaming merge
(``open_checkpoint``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from adapters_core.choices import INPUT_SUFFIXES, PICKLE_SUFFIXES
from adapters_core.errors import FormatError
from adapters_core.formats import load_adapter
from adapters_core.models import read_checkpoint
from adapters_core.ops.streaming import open_checkpoint

TENSORS = {"m.lora_down.weight": torch.arange(6.0).reshape(2, 3), "m.lora_up.weight": torch.ones(4, 2)}


def _readers(path):
    streamed = open_checkpoint(path)
    return {
        "adapter": load_adapter(path).tensors,
        "checkpoint": read_checkpoint(path)[0],
        "streaming": {key: streamed[key] for key in streamed},
    }


@pytest.mark.parametrize("suffix", INPUT_SUFFIXES)
def test_every_reader_takes_every_input_suffix_alike(tmp_path, suffix):
    path = tmp_path / f"weights{suffix.upper() if suffix == '.ckpt' else suffix}"
    if suffix in PICKLE_SUFFIXES:
        torch.save({"state_dict": TENSORS, "global_step": 7}, path)
    else:
        save_file(TENSORS, path)
    for reader, tensors in _readers(path).items():
        assert set(tensors) == set(TENSORS), reader
        for key, tensor in TENSORS.items():
            assert torch.equal(tensors[key], tensor), (reader, key)


def test_every_reader_refuses_other_names_and_damaged_files_alike(tmp_path):
    other = tmp_path / "weights.onnx"
    torch.save(TENSORS, other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    empty = tmp_path / "empty.pt"
    torch.save({"global_step": 7}, empty)
    for path, message in [
        (other, r"weights.onnx: unknown (file type|checkpoint format) '.onnx'; expected .safetensors, .ckpt, .pt, .pth or .bin"),
        (broken, r"broken.safetensors: not a readable safetensors file"),
        (empty, r"empty.pt: holds no tensors; expected a dict of tensors"),
    ]:
        for read in (load_adapter, read_checkpoint, open_checkpoint):
            with pytest.raises(FormatError, match=message):
                read(path)
