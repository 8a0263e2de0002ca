"""The streamed merge writes exactly (bit for bit) what merging the loaded model writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tool_support import TinyFiles, random_lora, tiny, write_file  # noqa: F401 - fixtures

from adapters_core.errors import NonFiniteError
from adapters_core.ops.merge_model import merge_into_model


def adapters(tiny: TinyFiles, root: Path) -> list[Path]:
    lierla = random_lora(tiny.model, dim=4, alpha=2.0, seed=1)
    c3lier = random_lora(tiny.model, dim=8, alpha=None, conv_dim=2, conv_alpha=1.0, seed=2)
    return [write_file(root / "a.safetensors", lierla), write_file(root / "b.safetensors", c3lier)]


@pytest.mark.parametrize("save_precision", ["fp16", "float"])
def test_streamed_single_file_equals_the_loaded_model_path(tiny: TinyFiles, tmp_path: Path, save_precision: str) -> None:
    paths = adapters(tiny, tmp_path)
    ratios = [0.7, -0.4]
    streamed = merge_into_model(  # single file -> single file: streamed tensor by tensor
        tiny.single, paths, ratios, save_to=tmp_path / "streamed.safetensors", save_precision=save_precision
    )
    loaded = merge_into_model(  # Diffusers folder (same weights) -> single file: the whole model in memory
        tiny.folder, paths, ratios, save_to=tmp_path / "loaded.safetensors", save_precision=save_precision
    )
    with safe_open(str(streamed), "pt") as ours, safe_open(str(loaded), "pt") as theirs, safe_open(
        str(tiny.single), "pt"
    ) as source:
        common = set(ours.keys()) & set(theirs.keys())
        changed = 0
        for key in sorted(common):
            tensor = ours.get_tensor(key)
            assert torch.equal(tensor, theirs.get_tensor(key).reshape(tensor.shape)), key
            changed += not torch.equal(tensor, source.get_tensor(key).to(tensor.dtype))
    assert len(common) > 200 and changed > 100  # the adapted layers of both adapters were compared


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_unchanged_tensors_are_copied_byte_for_byte(
    tiny: TinyFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    """Tensors no adapter touches, saved in their own dtype, go file to file (copy_file_range,
    or read and written where the file system refuses it) and equal the source's bytes."""
    import errno
    import os

    if not kernel_copy:
        def refuse(*args: object, **kwargs: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    paths = adapters(tiny, tmp_path)
    out = merge_into_model(tiny.single, paths[:1], [0.5], save_to=tmp_path / "m.safetensors", save_precision="float")
    with safe_open(str(out), "pt") as ours, safe_open(str(tiny.single), "pt") as source:
        assert set(ours.keys()) == set(source.keys())
        same = [key for key in ours.keys() if torch.equal(ours.get_tensor(key), source.get_tensor(key))]
        assert len(same) > 100 and len(same) < len(set(ours.keys()))  # copied ones, and merged ones that differ
        assert "first_stage_model.decoder.conv_in.weight" in same


def test_a_merge_that_overflows_the_save_precision_writes_nothing(tiny: TinyFiles, tmp_path: Path) -> None:
    huge = random_lora(tiny.model, dim=4, alpha=4.0, seed=3, scale=300.0)  # deltas far past fp16's 65504
    path = write_file(tmp_path / "huge.safetensors", huge)
    merged = merge_into_model(tiny.single, [path], [1.0], save_to=tmp_path / "fp32.safetensors")
    assert merged.is_file()  # fits in float32
    out = tmp_path / "fp16.safetensors"
    with pytest.raises(NonFiniteError, match="non-finite"):
        merge_into_model(tiny.single, [path], [1.0], save_to=out, save_precision="fp16")
    assert not out.exists()
