"""``adapt merge``: into a checkpoint (streamed single file, Diffusers folder) and into one adapter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from tool_support import (  # noqa: F401 - fixtures
    TinyFiles,
    adapt,
    error_line,
    fulldelta,
    fulldelta_tensors,
    layer_weights,
    modules_of,
    one_thread,
    random_lora,
    reference_delta,
    targets,
    tiny,
    write_file,
)

from adapt_cli.options import expand_multi_value
from adapt_sd.checkpoint_names import ldm_module_names
from adapters_core.models import build_tiny_model, load_sd_model, to_pipeline
from adapters_core.models.ldm_layout import TE_V2_PREFIX
from adapters_core.ops.deltas import read_adapter
from adapters_core.ops.merge import merge_adapters
from adapters_core.ops.merge_model import merge_into_model
from adapters_core.targets import layer_weight


def expected_weights(
    tiny: TinyFiles, files: list[dict[str, torch.Tensor]], ratios: list[float]
) -> dict[str, torch.Tensor]:
    weights = layer_weights(tiny.model)
    for tensors, ratio in zip(files, ratios, strict=True):
        for name, module in modules_of(tensors).items():
            weights[name] = weights[name] + ratio * reference_delta(module, weights[name].shape)
    return weights


def assert_weights(
    model_weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float = 2e-6
) -> None:
    assert model_weights.keys() == expected.keys()
    worst = max(float((model_weights[n].detach().double() - expected[n]).abs().max()) for n in expected)
    assert worst < tol


def two_adapters(tiny: TinyFiles, root: Path) -> tuple[list[Path], list[dict[str, torch.Tensor]]]:
    lierla = random_lora(tiny.model, dim=4, alpha=2.0, seed=1)
    c3lier = random_lora(tiny.model, dim=8, alpha=None, conv_dim=2, conv_alpha=1.0, seed=2)
    paths = [write_file(root / "a.safetensors", lierla), write_file(root / "b.safetensors", c3lier)]
    return paths, [lierla, c3lier]


def test_merge_into_single_file_streams_exact_formula(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    paths, files = two_adapters(tiny, tmp_path)
    out = tmp_path / "merged.safetensors"
    code, stdout, _ = adapt(
        "merge", "--sd_model", tiny.single, "--models", *paths, "--ratios", 0.7, -0.4, "--save_to", out
    )
    assert code == 0, stdout
    merged = load_sd_model(out, need_tokenizer=False)
    assert_weights(layer_weights(merged), expected_weights(tiny, files, [0.7, -0.4]))
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
        source_keys = set(safe_open(str(tiny.single), "pt").keys())
        assert set(handle.keys()) == source_keys
        vae_key = "first_stage_model.encoder.conv_in.weight"
        assert torch.equal(handle.get_tensor(vae_key), safe_open(str(tiny.single), "pt").get_tensor(vae_key))
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert metadata["modelspec.merged_from"] == "tiny, a, b"
    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny.folder), local_files_only=True)
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], merged.unet.state_dict()["conv_in.weight"])


def test_merge_diffusers_folder_to_folder_and_single_file(tiny: TinyFiles, tmp_path: Path) -> None:
    paths, files = two_adapters(tiny, tmp_path)
    expected = expected_weights(tiny, files, [1.0, 0.5])
    folder = merge_into_model(tiny.folder, paths, [1.0, 0.5], save_to=tmp_path / "merged")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert_weights({t.name: layer_weight(t.layer) for t in targets(pipe)}, expected)  # type: ignore[arg-type]
    single = merge_into_model(tiny.folder, paths, [1.0, 0.5], save_to=tmp_path / "m.safetensors", save_precision="fp16")
    with safe_open(str(single), "pt") as handle:
        assert handle.get_tensor("model.diffusion_model.input_blocks.0.0.weight").dtype == torch.float16
    half = load_sd_model(single, need_tokenizer=False)
    assert_weights(layer_weights(half), expected, tol=2e-3)


def test_merge_single_file_into_folder_and_ckpt(tiny: TinyFiles, tmp_path: Path) -> None:
    paths, files = two_adapters(tiny, tmp_path)
    expected = expected_weights(tiny, files[:1], [0.3])
    folder = merge_into_model(tiny.single, paths[:1], [0.3], save_to=tmp_path / "out")
    assert_weights(layer_weights(load_sd_model(folder, need_tokenizer=False)), expected)
    ckpt = merge_into_model(tiny.single, paths[:1], [0.3], save_to=tmp_path / "out.ckpt")
    assert_weights(layer_weights(load_sd_model(ckpt, need_tokenizer=False)), expected)
    again = merge_into_model(ckpt, paths[:1], [0.0], save_to=tmp_path / "again.safetensors")  # a .ckpt source
    assert_weights(layer_weights(load_sd_model(again, need_tokenizer=False)), expected)


def test_merge_refuses_another_base_model_and_writes_nothing(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, seed=3)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors[f"{name}.lora_down.weight"] = torch.randn(4, 48, 1, 1)  # 48 input channels: not the tiny U-Net
    path = write_file(tmp_path / "other.safetensors", tensors)
    out = tmp_path / "merged.safetensors"
    code, _, err = adapt("merge", "--sd_model", tiny.single, "--models", path, "--save_to", out)
    assert code == 2
    assert name in error_line(err) and "another base model" in error_line(err)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_merge_refuses_a_module_without_its_up_weight(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    tensors = random_lora(tiny.model, seed=4)
    name = "lora_unet_mid_block_attentions_0_proj_out"
    del tensors[f"{name}.lora_up.weight"]
    path = write_file(tmp_path / "broken.safetensors", tensors)
    code, _, err = adapt("merge", "--sd_model", tiny.single, "--models", path, "--save_to", tmp_path / "o.safetensors")
    assert code == 2 and name in error_line(err) and "lora_up.weight" in error_line(err)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratios", "0.5", "0.5"], "--ratios: 2 values for 1 --models"),
        (["--models", "missing.safetensors"], "no such file"),
    ],
)
def test_merge_bad_input_is_one_line(tiny: TinyFiles, tmp_path: Path, adapt, args: list[str], message: str) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model))
    base = ["merge", "--sd_model", tiny.single, "--models", path, "--save_to", tmp_path / "out.safetensors"]
    code, _, err = adapt(*base, *args)
    assert code == 2 and message in error_line(err)
    assert not (tmp_path / "out.safetensors").exists()


def test_existing_output_needs_overwrite(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep")
    code, _, err = adapt("merge", "--models", path, path, "--save_to", out)
    assert code == 2 and "--overwrite" in error_line(err)
    assert out.read_bytes() == b"keep"
    assert adapt("merge", "--models", path, path, "--save_to", out, "--overwrite")[0] == 0
    assert out.read_bytes() != b"keep"


def test_blend_follows_kohya_sqrt_rule(tiny: TinyFiles, tmp_path: Path) -> None:
    a = random_lora(tiny.model, dim=4, alpha=2.0, seed=1)
    b = random_lora(tiny.model, dim=4, alpha=8.0, seed=2, text_encoder=False)
    paths = [write_file(tmp_path / "a.safetensors", a), write_file(tmp_path / "b.safetensors", b)]
    out = merge_adapters(paths, [0.5, -0.25], save_to=tmp_path / "sum.safetensors")
    merged = read_adapter(out).modules
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    s_a, s_b = math.sqrt(2 / 2) * 0.5, math.sqrt(8 / 2) * -0.25
    down = s_a * a[f"{name}.lora_down.weight"] + s_b * b[f"{name}.lora_down.weight"]
    up = abs(s_a) * a[f"{name}.lora_up.weight"] + abs(s_b) * b[f"{name}.lora_up.weight"]
    assert torch.allclose(merged[name]["lora_down.weight"], down, atol=1e-6)
    assert torch.allclose(merged[name]["lora_up.weight"], up, atol=1e-6)
    assert float(merged[name]["alpha"]) == 2.0
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # only in the first file
    assert torch.allclose(merged[te]["lora_down.weight"], 0.5 * a[f"{te}.lora_down.weight"])


def test_concat_is_the_exact_sum_and_loads_in_diffusers(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    paths, files = two_adapters(tiny, tmp_path)
    out = tmp_path / "concat.safetensors"
    code, _, _ = adapt("merge", "--models", *paths, "--ratios", 0.6, -1.5, "--concat", "--shuffle", "--save_to", out)
    assert code == 0
    adapter = read_adapter(out)
    expected = expected_weights(tiny, files, [0.6, -1.5])
    base = layer_weights(tiny.model)
    inputs = [modules_of(tensors) for tensors in files]
    for name, module in adapter.modules.items():
        rank = sum(m[name]["lora_down.weight"].shape[0] for m in inputs if name in m)
        assert module["lora_down.weight"].shape[0] == rank
        got = base[name] + reference_delta(module, base[name].shape)
        assert torch.allclose(got, expected[name], atol=1e-5)
    assert adapter.metadata["ss_network_dim"] == "Dynamic"
    assert adapter.metadata["modelspec.merged_from"] == "a, b"
    pipe = to_pipeline(build_tiny_model())  # the same weights as the files' base
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    assert_weights({t.name: layer_weight(t.layer) for t in targets(pipe)}, expected, tol=1e-5)


def test_differing_ranks_point_to_svd_merge(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    paths, _ = two_adapters(tiny, tmp_path)
    out = tmp_path / "sum.safetensors"
    code, _, err = adapt("merge", "--models", *paths, "--save_to", out)
    assert code == 2 and "svd-merge" in error_line(err) and "rank 8" in error_line(err)
    assert not out.exists()


def test_multi_value_flags_and_negative_ratios() -> None:
    args = ["--models", "a", "b", "--ratios", "1", "-0.5", "--save-to", "x", "--concat"]
    flags = frozenset({"--models", "--ratios"})
    assert expand_multi_value(args, flags) == [
        "--models",
        "a",
        "--models",
        "b",
        "--ratios",
        "1",
        "--ratios",
        "-0.5",
        "--save-to",
        "x",
        "--concat",
    ]
    assert expand_multi_value(["--models", "--concat"], flags) == ["--models", "--concat"]


def test_sd2_fused_in_proj_maps_to_q_k_v() -> None:
    key = f"{TE_V2_PREFIX}transformer.resblocks.3.attn.in_proj_weight"
    shapes = {key: torch.zeros(96, 32), f"{TE_V2_PREFIX}transformer.resblocks.3.mlp.c_fc.weight": torch.zeros(8, 32)}
    names = ldm_module_names(
        shapes,
        {
            "layers_per_block": 2,
            "block_out_channels": [32],
            "down_block_types": ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"],
        },
        openclip=True,
    )
    prefix = "lora_te_text_model_encoder_layers_3_"
    assert names[key] == [f"{prefix}self_attn_q_proj", f"{prefix}self_attn_k_proj", f"{prefix}self_attn_v_proj"]
    assert names[f"{TE_V2_PREFIX}transformer.resblocks.3.mlp.c_fc.weight"] == [f"{prefix}mlp_fc1"]


def test_types_without_factors_merge_into_models_and_concat(
    tiny: TinyFiles, tmp_path: Path, fulldelta: str, adapt
) -> None:
    first = fulldelta_tensors(tiny.model, seed=1)
    path = write_file(tmp_path / "full.safetensors", first)
    out = merge_into_model(tiny.single, [path], [0.5], save_to=tmp_path / "merged.safetensors")
    weights = layer_weights(tiny.model)
    merged = layer_weights(load_sd_model(out, need_tokenizer=False))
    for name, module in modules_of(first).items():
        assert torch.allclose(
            merged[name], weights[name] + 0.5 * module["diff"].double().reshape(weights[name].shape), atol=1e-6
        )
    code, _, err = adapt("merge", "--models", path, path, "--save_to", tmp_path / "x.safetensors")
    assert code == 2 and "--concat" in error_line(err)
    concat = merge_adapters([path, path], [1.0, 1.0], save_to=tmp_path / "concat.safetensors", concat=True)
    modules = read_adapter(concat).modules
    name = next(iter(modules))
    assert float(modules[name]["rank"]) == 6
    assert torch.allclose(modules[name]["diff"], 2 * first[f"{name}.diff"], atol=1e-5)
