"""``adapt resize``: new ranks with the effective scale kept, for every type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from output_support import assert_fit_matches, assert_refused_non_finite, write_non_finite
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
    truncation_error,
    write_file,
)

from adapters_core.ops.deltas import read_adapter
from adapters_core.ops.resize import choose_rank, dynamic_rank, resize_adapter

S = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "method, param, expected",
    [
        ("sv_ratio", 4.0, 3),  # 2 values above 10/4, +1
        ("sv_ratio", 1000.0, 6),  # all 5 non-zero, +1
        ("sv_cumulative", 0.8, 3),  # cumsum/sum = .54,.81,...: index 1, +1, +1
        ("sv_fro", 0.9, 3),  # squares: .77,.96: index 1 (target .81), +1, +1
        ("sv_fro", 0.99, 4),  # .77,.96,.99: index 2, +1, +1
    ],
)
def test_dynamic_rank_follows_kohya(method: str, param: float, expected: int) -> None:
    assert dynamic_rank(S, method, param, length=8) == expected


def test_choose_rank_caps_and_handles_zero_modules() -> None:
    assert choose_rank(S, max_rank=3, length=8, method="sv_ratio", param=1000.0) == 3
    assert choose_rank(S, max_rank=6, length=8, method=None, param=None) == 6
    assert choose_rank(torch.zeros(4), max_rank=6, length=8, method=None, param=None) == 1


def test_resize_keeps_the_scale_and_is_the_best_fit(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, dim=8, alpha=2.0, conv_dim=4, conv_alpha=1.0, seed=7)
    source = write_file(tmp_path / "in.safetensors", tensors, {"ss_training_comment": "trained", "ss_seed": "42"})
    out = tmp_path / "out.safetensors"
    code, stdout, _ = adapt(
        "resize", "--model", source, "--save_to", out, "--new_rank", 3, "--new_conv_rank", 2, "--verbose"
    )
    assert code == 0
    assert "Frobenius retained" in stdout and "rank 8 -> 3" in stdout
    adapter = read_adapter(out)
    pairs = {}
    for name, module in modules_of(tensors).items():
        shape = torch.Size((module["lora_up.weight"].shape[0], *module["lora_down.weight"].shape[1:]))
        old = reference_delta(module, shape)
        new_module = adapter.modules[name]
        k = new_module["lora_down.weight"].shape[0]
        conv3x3 = len(shape) == 4 and shape[2] == 3
        assert k == (2 if conv3x3 else 3)
        old_scale = float(module["alpha"]) / module["lora_down.weight"].shape[0]
        assert float(new_module["alpha"]) == pytest.approx(old_scale * k)  # alpha = s * k: same scale
        error = float(torch.linalg.vector_norm(reference_delta(new_module, shape) - old))
        assert error == pytest.approx(truncation_error(old, k), rel=1e-4, abs=1e-7)
        pairs[name] = (old, reference_delta(new_module, shape))
    fit = assert_fit_matches(stdout, pairs)  # the summary line: share kept, overall and worst layer
    assert 0.0 < fit.worst_kept < fit.kept < 1.0
    meta = adapter.metadata
    assert meta["ss_network_dim"] == "3" and meta["ss_seed"] == "42"
    assert meta["ss_training_comment"].startswith("dimension is resized from Dynamic to 3")
    assert meta["ss_training_comment"].endswith("; trained")
    same = tmp_path / "same.safetensors"
    resize_adapter(source, save_to=same, new_rank=8)
    for name, module in read_adapter(same).modules.items():
        original = modules_of(tensors)[name]
        shape = torch.Size((original["lora_up.weight"].shape[0], *original["lora_down.weight"].shape[1:]))
        assert torch.allclose(reference_delta(module, shape), reference_delta(original, shape), atol=1e-6)


def test_dynamic_resize_writes_dynamic_metadata(tiny: TinyFiles, tmp_path: Path) -> None:
    source = write_file(tmp_path / "in.safetensors", random_lora(tiny.model, dim=8, seed=8))
    path, report = resize_adapter(
        source, save_to=tmp_path / "d.safetensors", new_rank=8, dynamic_method="sv_fro", dynamic_param=0.7
    )
    assert all(item.fit.kept >= 0.7 - 1e-6 for item in report)
    assert len({item.new_rank for item in report}) > 1
    assert read_adapter(path).metadata["ss_network_dim"] == "Dynamic"


def test_types_without_factors_resize_through_extract(tiny: TinyFiles, tmp_path: Path, fulldelta: str) -> None:
    tensors = fulldelta_tensors(tiny.model, rank=4, seed=3)
    source = write_file(tmp_path / "f.safetensors", tensors)
    path, report = resize_adapter(source, save_to=tmp_path / "r.safetensors", new_rank=2)
    adapter = read_adapter(path)
    assert {item.new_rank for item in report} == {2}
    name = next(iter(adapter.modules))
    assert float(adapter.modules[name]["rank"]) == 2
    error = float(torch.linalg.vector_norm(adapter.modules[name]["diff"] - tensors[f"{name}.diff"]))
    assert error == pytest.approx(truncation_error(tensors[f"{name}.diff"], 2), rel=1e-3)


def test_bad_dynamic_settings(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    source = write_file(tmp_path / "in.safetensors", random_lora(tiny.model))
    out = tmp_path / "out.safetensors"
    code, _, err = adapt("resize", "--model", source, "--save_to", out, "--dynamic_method", "sv_fro")
    assert code == 2 and "--dynamic_param" in error_line(err)
    code, _, err = adapt(
        "resize", "--model", source, "--save_to", out, "--dynamic_method", "sv_fro", "--dynamic_param", 3
    )
    assert code == 2 and "fraction" in error_line(err)
    assert not out.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_adapters_are_refused(tiny: TinyFiles, tmp_path: Path, adapt, bad: float) -> None:
    key = "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"
    broken = write_non_finite(tmp_path / "broken.safetensors", random_lora(tiny.model, seed=4), key, bad)
    out = tmp_path / "out.safetensors"
    assert_refused_non_finite(adapt, ("resize", "--model", broken, "--save_to", out, "--new_rank", 2), broken, key, out)
