"""``adapt extract --from_dylora``: the rank unit, 2*unit, ... adapters of a DyLoRA file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from tool_support import (  # noqa: F401 - fixtures
    TinyFiles,
    adapt,
    error_line,
    fulldelta,
    fulldelta_tensors,
    one_thread,
    random_lora,
    tiny,
    write_file,
)

from adapters_core.ops.dylora_split import split_dylora

DYLORA_METADATA = {
    "ss_network_module": "networks.dylora",
    "ss_network_dim": "8",
    "ss_network_alpha": "4.0",
    "ss_network_args": '{"unit": "2", "conv_dim": "8"}',
    "ss_output_name": "dy",
}


def test_split_writes_each_rank_with_alpha_unchanged(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, dim=8, alpha=4.0, conv_dim=8, conv_alpha=4.0, seed=5)
    source = write_file(tmp_path / "dy.safetensors", tensors, DYLORA_METADATA)
    code, stdout, _ = adapt("extract", "--from-dylora", source, "--unit", 2, "--save_to", tmp_path / "out.safetensors")
    assert code == 0, stdout
    written = sorted(p.name for p in tmp_path.glob("out-*.safetensors"))
    assert written == ["out-0002.safetensors", "out-0004.safetensors", "out-0006.safetensors"]
    for k in (2, 4, 6):
        with safe_open(str(tmp_path / f"out-{k:04d}.safetensors"), "pt") as handle:
            assert set(handle.keys()) == set(tensors)
            for key in handle.keys():
                value = handle.get_tensor(key)
                if key.endswith("lora_down.weight"):
                    assert torch.equal(value, tensors[key][:k])
                elif key.endswith("lora_up.weight"):
                    assert torch.equal(value, tensors[key][:, :k])
                else:
                    assert float(value) == 4.0
            meta = handle.metadata()
        assert meta["ss_network_dim"] == str(k) and meta["ss_network_alpha"] == "4.0"
        assert meta["ss_training_comment"] == f"split from DyLoRA, rank 8 to {k}"
        assert meta["ss_output_name"] == "dy"  # the input's metadata is carried forward
        assert f'"conv_dim": "{k}"' in meta["ss_network_args"]


def test_split_refuses_bad_units_existing_outputs_and_other_types(
    tiny: TinyFiles, tmp_path: Path, adapt, fulldelta: str
) -> None:
    source = write_file(tmp_path / "dy.safetensors", random_lora(tiny.model, dim=4, seed=6), DYLORA_METADATA)
    out = tmp_path / "out.safetensors"
    code, _, err = adapt("extract", "--from_dylora", source, "--unit", 4, "--save_to", out)
    assert code == 2 and "leaves no smaller rank" in error_line(err)
    code, _, err = adapt("extract", "--from_dylora", source, "--save_to", out)
    assert code == 2 and "--unit" in error_line(err)
    (tmp_path / "out-0002.safetensors").write_bytes(b"keep")
    code, _, err = adapt("extract", "--from_dylora", source, "--unit", 1, "--save_to", out)
    assert code == 2 and "out-0002.safetensors: output exists" in error_line(err)
    assert not (tmp_path / "out-0001.safetensors").exists()
    assert len(split_dylora(source, unit=1, save_to=out, overwrite=True)) == 3
    other = write_file(tmp_path / "full.safetensors", fulldelta_tensors(tiny.model), DYLORA_METADATA)
    code, _, err = adapt("extract", "--from_dylora", other, "--unit", 1, "--save_to", tmp_path / "f.safetensors")
    assert code == 2 and "lora_down/lora_up" in error_line(err)


def test_split_refuses_a_file_that_is_not_a_dylora(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, dim=4, seed=7)
    for name, metadata in (("plain", {"ss_network_module": "networks.lora"}), ("bare", {})):
        source = write_file(tmp_path / f"{name}.safetensors", tensors, metadata)
        code, stdout, err = adapt("extract", "--from_dylora", source, "--unit", 1, "--save_to", tmp_path / "o.safetensors")
        found = "'networks.lora'" if metadata else "no ss_network_module"
        assert code == 2 and stdout == ""
        assert error_line(err) == (
            f"adapt: error: {source}: not a DyLoRA file (metadata has {found}, expected 'networks.dylora'); "
            "only a DyLoRA's first components form lower-rank adapters (use adapt resize for others)"
        )
        assert list(tmp_path.glob("o*")) == []
