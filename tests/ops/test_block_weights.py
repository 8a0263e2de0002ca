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

from adapters_core.blocks import (
    BLOCK_WEIGHT_PRESETS,
    LBW17_NAMES,
    LBW_NAMES,
    NUM_BLOCKS,
    block_index,
    parse_block_multipliers,
)
from adapters_core.errors import BlockSpecError
from adapters_core.models import build_tiny_model, load_sd_model
from adapters_core.network import Network
from adapters_core.ops.deltas import read_adapter

# A different factor for every block, and one for the text encoder.
UNET_FACTORS = [round(0.1 + 0.07 * i, 2) for i in range(NUM_BLOCKS)]
SPEC_26 = json.dumps([0.3, *UNET_FACTORS])


def factor_of(name: str, text_encoder: float = 0.3) -> float:
    block = block_index(name)
    return text_encoder if block < 0 else UNET_FACTORS[block]


def test_forms_and_presets_map_to_the_25_blocks_and_base() -> None:
    spec = parse_block_multipliers(SPEC_26)
    assert spec.text_encoder == 0.3 and list(spec.unet) == UNET_FACTORS
    only_unet = parse_block_multipliers(",".join(map(str, UNET_FACTORS)))
    assert only_unet.text_encoder == 1.0 and list(only_unet.unet) == UNET_FACTORS
    outs = parse_block_multipliers("outs")  # LBW's OUTS: BASE 1, only OUT03..OUT11 of its 17 blocks
    by_name = dict(zip(LBW_NAMES, [outs.text_encoder, *outs.unet]))
    assert [by_name[n] for n in LBW17_NAMES] == [float(v) for v in BLOCK_WEIGHT_PRESETS["OUTS"].split(",")]
    assert by_name["IN03"] == 1.0  # blocks the 17-value form leaves out keep 1, as kohya's --lbws
    assert len(LBW_NAMES) == NUM_BLOCKS + 1


@pytest.mark.parametrize("text", ["1,2,3", "[" + ",".join(["1"] * 24) + "]", "FOO", "1,x," + ",".join(["1"] * 23)])
def test_bad_specs_name_the_expected_counts(text: str) -> None:
    with pytest.raises(BlockSpecError, match=r"--block_weights .*(expected|preset)"):
        parse_block_multipliers(text)


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
