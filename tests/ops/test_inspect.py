"""``adapt inspect``: type, base model, blocks, ranks, alphas, delta norms, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tool_support import (  # noqa: F401 - fixtures
    TinyFiles,
    adapt,
    error_line,
    fulldelta,
    fulldelta_tensors,
    modules_of,
    one_thread,
    random_lora,
    reference_delta,
    tiny,
    write_file,
)

from adapters_core.ops.inspect import block_label, inspect_adapter


def test_block_labels() -> None:
    assert block_label("lora_te_text_model_encoder_layers_0_mlp_fc1") == "TE"
    assert block_label("lora_unet_down_blocks_0_attentions_1_proj_in") == "IN02"
    assert block_label("lora_unet_mid_block_attentions_0_proj_in") == "MID"
    assert block_label("lora_unet_up_blocks_3_attentions_2_proj_out") == "OUT11"


def test_json_report_counts_blocks_and_norms(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, dim=4, alpha=1.0, conv_dim=2, conv_alpha=2.0, seed=9)
    path = write_file(tmp_path / "a.safetensors", tensors, {"ss_base_model_version": "sd_v1", "ss_network_dim": "4"})
    code, stdout, _ = adapt("inspect", path, "--json")
    assert code == 0
    report = json.loads(stdout)
    modules = modules_of(tensors)
    assert report["network"] == "lora" and report["base_model"] == "sd_v1"
    assert (report["modules"], report["keys"]) == (len(modules), len(tensors))
    assert report["ranks"] == [2, 4] and report["alphas"] == [1.0, 2.0]
    assert sum(block["modules"] for block in report["blocks"]) == len(modules)
    assert report["blocks"][0]["block"] == "TE"
    for info in report["module_list"]:
        module = modules[info["name"]]
        shape = torch.Size(info["shape"])
        assert info["norm"] == pytest.approx(float(torch.linalg.vector_norm(reference_delta(module, shape))), rel=1e-5)
    assert report["metadata"]["ss_network_dim"] == "4"


def test_text_report_and_files_without_metadata(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "bare.safetensors", random_lora(tiny.model, alpha=None, text_encoder=False))
    code, stdout, _ = adapt("inspect", path)
    assert code == 0
    assert "type:          lora" in stdout and "unknown (no metadata)" in stdout
    assert "alphas:        4" in stdout  # a missing alpha means alpha = rank
    assert "MID" in stdout and "lora_unet_mid_block_attentions_0_proj_in" in stdout


def test_any_type_gets_norms_from_the_architecture(tiny: TinyFiles, tmp_path: Path, fulldelta: str) -> None:
    tensors = fulldelta_tensors(tiny.model, rank=2)
    report = inspect_adapter(write_file(tmp_path / "f.safetensors", tensors))
    assert report.network == "fulldelta"
    for info in report.module_list[:10]:
        assert info.norm == pytest.approx(float(torch.linalg.vector_norm(tensors[f"{info.name}.diff"])), rel=1e-5)


def test_missing_file_is_one_line(tmp_path: Path, adapt) -> None:
    code, _, err = adapt("inspect", tmp_path / "nope.safetensors")
    assert code == 2 and "no such file" in error_line(err)
