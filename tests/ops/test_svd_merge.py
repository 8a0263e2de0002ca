"""``adapt svd-merge``: the SVD of a sum of low-rank terms from their factors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from output_support import assert_refused_non_finite, write_non_finite
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
from adapters_core.ops.lowrank import low_rank_sum_svd, pad_components, truncate
from adapters_core.ops.svd_merge import svd_merge


def summed_deltas(files: list[dict[str, torch.Tensor]], ratios: list[float]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for tensors, ratio in zip(files, ratios, strict=True):
        for name, module in modules_of(tensors).items():
            shape = torch.Size((module["lora_up.weight"].shape[0], *module["lora_down.weight"].shape[1:]))
            delta = ratio * reference_delta(module, shape)
            total[name] = total[name] + delta if name in total else delta
    return total


def test_low_rank_sum_svd_matches_full_svd() -> None:
    generator = torch.Generator().manual_seed(0)
    ups = [torch.randn(50, 3, generator=generator), torch.randn(50, 5, generator=generator)]
    downs = [torch.randn(3, 70, generator=generator), torch.randn(5, 70, generator=generator)]
    full = ups[0] @ downs[0] + ups[1] @ downs[1]
    u, s, vh = low_rank_sum_svd(ups, downs)
    assert torch.allclose(u @ torch.diag(s) @ vh, full, atol=1e-4)
    assert torch.allclose(s, torch.linalg.svdvals(full)[:8], rtol=1e-4)
    up, down = pad_components(*truncate(u, s, vh, 4), 6)
    assert up.shape == (50, 6) and down.shape == (6, 70)
    assert torch.allclose(down @ down.T, torch.eye(6), atol=1e-5)  # the padding rows are orthonormal too
    error = torch.linalg.matrix_norm(full - up @ down)
    assert abs(float(error) - float(s[4:].pow(2).sum().sqrt())) < 1e-3


def test_exact_when_new_rank_covers_the_sum_of_ranks(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    a = random_lora(tiny.model, dim=4, alpha=1.0, conv_dim=2, conv_alpha=1.0, seed=1)
    b = random_lora(tiny.model, dim=8, alpha=16.0, seed=2, text_encoder=False)
    paths = [write_file(tmp_path / "a.safetensors", a), write_file(tmp_path / "b.safetensors", b)]
    out = tmp_path / "svd.safetensors"
    code, _, _ = adapt(
        "svd-merge", "--models", *paths, "--ratios", 0.8, -0.5, "--new_rank", 12, "--new_conv_rank", 3, "--save_to", out
    )
    assert code == 0
    adapter = read_adapter(out)
    expected = summed_deltas([a, b], [0.8, -0.5])
    assert adapter.modules.keys() == expected.keys()
    for name, module in adapter.modules.items():
        rank = module["lora_down.weight"].shape[0]
        assert float(module["alpha"]) == rank  # scale 1, as kohya
        conv3x3 = module["lora_down.weight"].dim() == 4 and module["lora_down.weight"].shape[2] == 3
        assert rank == min(3 if conv3x3 else 12, *expected[name].shape[:2])
        got = reference_delta(module, expected[name].shape)
        assert torch.allclose(got, expected[name], atol=1e-5 * max(1.0, float(expected[name].abs().max())))
    assert adapter.metadata["ss_network_dim"] == "12"
    assert adapter.metadata["ss_network_alpha"] == "12.0"
    assert '"conv_dim": "3"' in adapter.metadata["ss_network_args"]


def test_truncation_is_optimal_and_clamp_is_optional(tiny: TinyFiles, tmp_path: Path) -> None:
    a = random_lora(tiny.model, dim=4, seed=3)
    b = random_lora(tiny.model, dim=6, alpha=3.0, seed=4)
    paths = [write_file(tmp_path / "a.safetensors", a), write_file(tmp_path / "b.safetensors", b)]
    expected = summed_deltas([a, b], [1.0, 1.0])
    out = svd_merge(paths, save_to=tmp_path / "r3.safetensors", new_rank=3)
    for name, module in read_adapter(out).modules.items():
        error = float(torch.linalg.vector_norm(reference_delta(module, expected[name].shape) - expected[name]))
        assert abs(error - truncation_error(expected[name], 3)) <= 1e-4 * max(1.0, error)
    clamped = svd_merge(paths, save_to=tmp_path / "c.safetensors", new_rank=3, clamp_quantile=0.9)
    plain, limited = read_adapter(out).modules, read_adapter(clamped).modules
    for name in list(plain)[:5]:
        before = torch.cat([plain[name]["lora_up.weight"].flatten(), plain[name]["lora_down.weight"].flatten()])
        after = torch.cat([limited[name]["lora_up.weight"].flatten(), limited[name]["lora_down.weight"].flatten()])
        limit = abs(float(torch.quantile(before, 0.9)))  # kohya: the quantile of the signed values
        assert after.abs().max() <= limit + 1e-6 < before.abs().max()
        assert float(after.abs().max()) == pytest.approx(limit, rel=1e-5)


def test_types_without_factors_fall_back_to_delta_and_extract(tiny: TinyFiles, tmp_path: Path, fulldelta: str) -> None:
    first = fulldelta_tensors(tiny.model, rank=3, seed=1)
    second = fulldelta_tensors(tiny.model, rank=2, seed=2)
    paths = [write_file(tmp_path / "a.safetensors", first), write_file(tmp_path / "b.safetensors", second)]
    out = svd_merge(paths, [1.0, 0.5], save_to=tmp_path / "out.safetensors", new_rank=4)
    adapter = read_adapter(out)
    assert adapter.network == "fulldelta"
    for name, module in list(adapter.modules.items())[:20]:
        total = first[f"{name}.diff"] + 0.5 * second[f"{name}.diff"]
        error = float(torch.linalg.vector_norm(module["diff"] - total))
        assert abs(error - truncation_error(total, 4)) < 1e-4


def test_bad_input(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model))
    out = tmp_path / "out.safetensors"
    code, _, err = adapt("svd-merge", "--models", path, path, "--ratios", 1, "--save_to", out)
    assert code == 2 and "--ratios" in error_line(err)
    other = random_lora(tiny.model)
    name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    other[f"{name}.lora_up.weight"] = torch.randn(99, 4)  # a wider layer than the tiny text encoder's
    other_path = write_file(tmp_path / "other.safetensors", other)
    code, _, err = adapt("svd-merge", "--models", path, other_path, "--save_to", out)
    assert code == 2 and name in error_line(err) and "different base models" in error_line(err)
    assert not out.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_adapters_are_refused(tiny: TinyFiles, tmp_path: Path, adapt, bad: float) -> None:
    good = write_file(tmp_path / "good.safetensors", random_lora(tiny.model, seed=1))
    key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"
    broken = write_non_finite(tmp_path / "broken.safetensors", random_lora(tiny.model, seed=2), key, bad)
    out = tmp_path / "out.safetensors"
    assert_refused_non_finite(adapt, ("svd-merge", "--models", good, broken, "--save_to", out), broken, key, out)
