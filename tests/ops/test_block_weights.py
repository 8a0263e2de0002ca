"""Per-block multipliers at apply time (``--block_weights``/``--lbws``): parsing, merge, svd-merge, patching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import te_out, unet_inputs, unet_out
from tool_support import (  # noqa: F401 - fixtures
    TinyFiles,
    adapt,
    error_line,
    layer_weights,
    modules_of,
    one_thread,
    random_lora,
    reference_delta,
    tiny,
    write_file,
)

from adapt_sdxl.blocks import LBW12_NAMES, SDXL_BLOCKS
from adapt_sdxl.tiny import build_tiny_sdxl_model, write_tiny_sdxl_model
from adapters_core.blocks import (
    BLOCK_WEIGHT_PRESETS,
    LBW17_NAMES,
    NUM_BLOCKS,
    SD_BLOCKS,
    block_index,
    parse_block_multipliers,
)
from adapters_core.errors import BlockSpecError
from adapters_core.models import build_tiny_model, load_sd_model
from adapters_core.network import Network
from adapters_core.ops.deltas import naming_family, read_adapter

# A different factor for every block, and one for the text encoder.
UNET_FACTORS = [round(0.1 + 0.07 * i, 2) for i in range(NUM_BLOCKS)]
SPEC_26 = json.dumps([0.3, *UNET_FACTORS])


def factor_of(name: str, text_encoder: float = 0.3) -> float:
    block = block_index(name)
    return text_encoder if block < 0 else UNET_FACTORS[block]


def test_forms_and_presets_map_to_the_25_blocks_and_base() -> None:
    spec = parse_block_multipliers(SPEC_26).factors(SD_BLOCKS)
    assert spec.text_encoder == 0.3 and [spec.factor(b) for b in range(NUM_BLOCKS)] == UNET_FACTORS
    only_unet = parse_block_multipliers(",".join(map(str, UNET_FACTORS))).factors(SD_BLOCKS)
    assert only_unet.text_encoder == 1.0 and [only_unet.factor(b) for b in range(NUM_BLOCKS)] == UNET_FACTORS
    outs = parse_block_multipliers("outs").factors(SD_BLOCKS)  # LBW's OUTS: BASE 1, only OUT03..OUT11 of its 17
    by_name = {"BASE": outs.text_encoder, **outs.by_name}
    assert [by_name[n] for n in LBW17_NAMES] == [float(v) for v in BLOCK_WEIGHT_PRESETS["OUTS"].split(",")]
    assert outs.factor(3) == 1.0  # IN03: blocks the 17-value form leaves out keep 1, as kohya's --lbws
    assert len(SD_BLOCKS.lbw_names) == NUM_BLOCKS + 1
    half = parse_block_multipliers("ALL0.5").factors(SD_BLOCKS)  # SD: the 17-value form, as kohya reads it
    assert (half.text_encoder, half.factor(4), half.factor(3)) == (0.5, 0.5, 1.0)
    assert [SD_BLOCKS.lbw_name(b) for b in (0, 12, 13, 24)] == ["IN00", "M00", "OUT00", "OUT11"]


def test_sdxl_layout_takes_lbws_20_19_and_12_value_forms() -> None:
    names = SDXL_BLOCKS.lbw_names
    assert names == ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
    # kohya's 23 SDXL blocks: 0 embeddings, 1..9 input, 10..12 middle, 13..21 output, 22 out
    assert [SDXL_BLOCKS.lbw_name(b) for b in (0, 1, 9, 10, 12, 13, 21, 22)] == [
        None, "IN00", "IN08", "M00", "M00", "OUT00", "OUT08", None]
    values = [round(0.05 * i, 2) for i in range(20)]
    full = parse_block_multipliers(",".join(map(str, values))).factors(SDXL_BLOCKS)
    assert full.text_encoder == 0.0 and full.by_name == dict(zip(names[1:], values[1:]))
    assert full.for_module("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == values[5]
    assert full.for_module("lora_unet_middle_block_1_proj_in") == values[10]
    assert full.for_module("lora_unet_output_blocks_8_0_out_layers_3") == values[19]
    assert full.for_module("lora_te2_text_model_encoder_layers_0_mlp_fc1") == 0.0
    without_base = parse_block_multipliers(",".join(map(str, values[1:]))).factors(SDXL_BLOCKS)
    assert without_base.text_encoder == 1.0 and without_base.by_name == full.by_name
    short = parse_block_multipliers(",".join(map(str, values[:12]))).factors(SDXL_BLOCKS)
    assert {"BASE": short.text_encoder, **short.by_name} == dict(zip(LBW12_NAMES, values[:12]))
    assert short.factor(1) == 1.0  # IN00 is not in the 12-value form
    half = parse_block_multipliers("ALL0.5").factors(SDXL_BLOCKS)  # a uniform preset fits every layout
    assert half.text_encoder == 0.5 and set(half.by_name.values()) == {0.5}
    with pytest.raises(BlockSpecError, match=r"got 17 values; expected 19 \(IN00..OUT08\), 20 \(BASE, IN00..OUT08\) "
                       r"or 12 \(LoRA Block Weight's form\) for a sdxl model"):
        parse_block_multipliers("OUTS").factors(SDXL_BLOCKS, "sdxl")


def test_merge_into_checkpoint_scales_each_block(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    lora = random_lora(tiny.model, dim=4, alpha=2.0, seed=3)
    path = write_file(tmp_path / "a.safetensors", lora)
    out = tmp_path / "merged.safetensors"
    code, stdout, stderr = adapt("merge", "--sd_model", tiny.single, "--models", path, "--ratios", 0.8,
                                 "--block_weights", SPEC_26, "--save_to", out)
    assert code == 0, stderr
    merged = layer_weights(load_sd_model(out, need_tokenizer=False))
    base = layer_weights(tiny.model)
    modules = modules_of(lora)
    assert {block_index(n) for n in modules} >= {-1, 1, 12, 16}  # text encoder, down, mid and up blocks
    for name, module in modules.items():
        expected = base[name] + 0.8 * factor_of(name) * reference_delta(module, base[name].shape)
        assert torch.allclose(merged[name], expected, atol=2e-6), name


def test_svd_merge_and_concat_take_kohya_lbws(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    first = random_lora(tiny.model, dim=2, alpha=1.0, seed=4)
    second = random_lora(tiny.model, dim=2, alpha=2.0, seed=5)
    paths = [write_file(tmp_path / "a.safetensors", first), write_file(tmp_path / "b.safetensors", second)]
    svd, concat = tmp_path / "svd.safetensors", tmp_path / "concat.safetensors"
    code, _, stderr = adapt("svd-merge", "--models", *paths, "--ratios", 1.0, -0.5, "--lbws", SPEC_26, "none",
                            "--new_rank", 8, "--save_to", svd)
    assert code == 0, stderr
    code, _, stderr = adapt("merge", "--models", *paths, "--ratios", 1.0, -0.5, "--concat",
                            "--block_weights", SPEC_26, "none", "--save_to", concat)
    assert code == 0, stderr
    shapes = layer_weights(tiny.model)
    for result in (read_adapter(svd), read_adapter(concat)):
        for name, module in modules_of(first).items():
            shape = shapes[name].shape
            expected = factor_of(name) * reference_delta(module, shape) - 0.5 * reference_delta(
                modules_of(second)[name], shape
            )
            assert torch.allclose(reference_delta(result.modules[name], shape), expected, atol=1e-5), name


def test_wrong_count_is_one_line_and_exit_2(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(tiny.model, seed=1))
    code, _, stderr = adapt("merge", "--models", path, path, "--block_weights", "1,1", "--save_to", tmp_path / "o.safetensors")
    assert code == 2
    assert "--block_weights '1,1': got 2 values; expected 25" in error_line(stderr)
    code, _, stderr = adapt("svd-merge", "--models", path, path, path, "--lbws", "ALL", "NONE",
                            "--save_to", tmp_path / "o.safetensors")
    assert code == 2 and "got 2 specs for 3 files" in error_line(stderr)
    assert not (tmp_path / "o.safetensors").exists()


def test_patched_network_with_block_weights_equals_its_merge() -> None:
    model = build_tiny_model()
    tensors = random_lora(model, dim=4, alpha=2.0, seed=6)
    inputs = unet_inputs(model)
    tokens = torch.arange(2, 12).unsqueeze(0)
    base_unet, base_te = unet_out(model, inputs), te_out(model, tokens)
    network = Network.from_weights(tensors, unet=model.unet, text_encoder=model.text_encoder, multiplier=0.7)
    network.set_block_multipliers(parse_block_multipliers(SPEC_26))
    network.apply()
    patched = unet_out(model, inputs), te_out(model, tokens)
    for name, module in network.adapter_modules():
        assert module.multiplier == pytest.approx(0.7 * factor_of(name))
    network.set_block_multipliers(parse_block_multipliers("0," + ",".join(["0"] * NUM_BLOCKS)))
    assert torch.equal(unet_out(model, inputs), base_unet) and torch.equal(te_out(model, tokens), base_te)
    network.set_block_multipliers(parse_block_multipliers(SPEC_26))
    network.merge_to()
    assert torch.allclose(unet_out(model, inputs), patched[0], atol=1e-5)
    assert torch.allclose(te_out(model, tokens), patched[1], atol=1e-5)
    assert not torch.allclose(patched[0], base_unet, atol=1e-4)


SDXL_VALUES = [round(0.1 + 0.09 * i, 2) for i in range(20)]  # BASE, IN00..IN08, M00, OUT00..OUT08


def sdxl_factor(name: str) -> float:
    label = SDXL_BLOCKS.lbw_name(SDXL_BLOCKS.index(name))
    return SDXL_VALUES[0] if name.startswith("lora_te") else SDXL_VALUES[SDXL_BLOCKS.lbw_names.index(label)]


def test_merge_into_an_sdxl_checkpoint_weights_sdxl_blocks(tmp_path: Path, adapt) -> None:
    model = build_tiny_sdxl_model(seed=0)
    write_tiny_sdxl_model(tmp_path / "model", seed=0, single_file=tmp_path / "sdxl.safetensors")
    lora = random_lora(model, dim=2, alpha=1.0, seed=7)
    path = write_file(tmp_path / "a.safetensors", lora)
    out = tmp_path / "merged.safetensors"
    spec = ",".join(map(str, SDXL_VALUES))
    code, _, stderr = adapt("merge", "--sd_model", tmp_path / "sdxl.safetensors", "--models", path,
                            "--block_weights", spec, "--save_to", out)
    assert code == 0, stderr
    merged, base = layer_weights(load_sd_model(out, need_tokenizer=False)), layer_weights(model)
    modules = modules_of(lora)
    labels = {SDXL_BLOCKS.lbw_name(SDXL_BLOCKS.index(n)) for n in modules}
    assert labels == {None, "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6))}
    for name, module in modules.items():
        expected = base[name] + sdxl_factor(name) * reference_delta(module, base[name].shape)
        assert torch.allclose(merged[name], expected, atol=2e-6), name
    # the same spec on the patched model through the Python API: each module's multiplier
    network = Network.from_weights(lora, model=model, multiplier=0.5)
    network.set_block_multipliers(parse_block_multipliers(spec))
    for name, adapter_module in network.adapter_modules():
        assert adapter_module.multiplier == pytest.approx(0.5 * sdxl_factor(name)), name


def test_an_sd_length_spec_on_an_sdxl_lora_is_one_line(tmp_path: Path, adapt) -> None:
    path = write_file(tmp_path / "a.safetensors", random_lora(build_tiny_sdxl_model(seed=0), seed=8))
    out = tmp_path / "o.safetensors"
    code, _, stderr = adapt("merge", "--models", path, "--block_weights", SPEC_26, "--save_to", out)
    assert code == 2 and not out.exists()
    assert "got 26 values; expected 19 (IN00..OUT08), 20 (BASE, IN00..OUT08) or 12" in error_line(stderr)
    assert "sdxl" in error_line(stderr)


def test_a_unet_only_sdxl_file_without_metadata_takes_sdxl_blocks(tmp_path: Path, adapt) -> None:
    lora = random_lora(build_tiny_sdxl_model(seed=0), dim=2, alpha=1.0, seed=9)
    unet_only = {key: value for key, value in lora.items() if key.startswith("lora_unet_")}
    path = write_file(tmp_path / "u.safetensors", unet_only)  # no metadata, no text-encoder prefix
    assert naming_family({}, modules_of(unet_only)).name == "sdxl"
    out = tmp_path / "o.safetensors"
    code, _, stderr = adapt("merge", "--models", path, "--concat", "--block_weights",
                            ",".join(map(str, SDXL_VALUES[1:])), "--save_to", out)
    assert code == 0, stderr
    merged = read_adapter(out)
    assert merged.metadata["ss_base_model_version"] == "sdxl_base_v1-0"  # the family its names fit
    for name, module in modules_of(unet_only).items():
        shape = torch.Size([module["lora_up.weight"].shape[0], *module["lora_down.weight"].shape[1:]])
        expected = sdxl_factor(name) * reference_delta(module, shape)
        assert torch.allclose(reference_delta(merged.modules[name], shape), expected, atol=1e-5), name
