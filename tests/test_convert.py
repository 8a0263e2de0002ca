"""``adapt convert``: kohya <-> diffusers <-> PEFT, each output loaded by the other library."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from helpers import randomize, te_out, unet_inputs, unet_out
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from adapt_cli.commands.convert import convert
from adapters_core.errors import FormatError, OutputExistsError
from adapters_core.formats import load_adapter, save_adapter
from adapters_core.interop.adapter_source import read_lora
from adapters_core.models import build_tiny_model, to_pipeline
from adapters_core.network import Network

TOKENS = torch.tensor([[0, 5, 17, 42, 1] + [1] * 72])
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A C3Lier file on the tiny model whose alphas differ per block (diffusers misreads those)."""
    root = tmp_path_factory.mktemp("convert")
    model = build_tiny_model()
    alphas = ",".join(str(1.0 + i % 3) for i in range(25))
    net = Network.create("lora", unet=model.unet, text_encoder=model.text_encoder,
                         options={"network_dim": 4, "network_alpha": 2, "conv_dim": 2, "conv_alpha": 1,
                                  "block_alphas": alphas})
    randomize(net, std=0.2)
    net.save(root / "kohya.safetensors", metadata={"ss_network_module": "networks.lora", "modelspec.title": "demo"})
    reference = build_tiny_model()
    Network.from_file(root / "kohya.safetensors", unet=reference.unet, text_encoder=reference.text_encoder).apply()
    return SimpleNamespace(root=root, kohya=root / "kohya.safetensors", reference=outputs(reference))


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    return te_out(model, TOKENS), unet_out(model, unet_inputs(model))


def assert_matches(model, reference) -> None:
    for got, want in zip(outputs(model), reference):
        assert (got - want).abs().max().item() < TOLERANCE


def run(*args: str | Path) -> Path:
    result = CliRunner().invoke(convert, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Path(args[1])


def deltas(path: Path) -> dict[str, torch.Tensor]:
    lora = read_lora(path)
    return {name: lora.scale(name) * (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1))
            for name, t in lora.modules.items()}


def test_kohya_to_diffusers_loads_in_diffusers(assets, tmp_path):
    out = run(assets.kohya, tmp_path / "diffusers.safetensors", "--to", "diffusers")
    with safe_open(str(out), "pt") as handle:
        keys = set(handle.keys())
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "unet.down_blocks.0.resnets.0.conv1.lora_B.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert not [key for key in keys if "alpha" in key]
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(out))
    assert_matches(pipe, assets.reference)
    # a folder output is what save_lora_weights writes, and loads the same way
    folder = run(assets.kohya, tmp_path / "as_folder", "--to", "diffusers")
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(folder))
    assert_matches(pipe, assets.reference)


def comfyui_places(keys: set[str], model) -> set[str]:
    """The keys ComfyUI's LoRA loader (comfy/lora.py, 2025) places on an SD 1.x model: a U-Net
    layer is looked up as ``unet.<diffusers path>`` with ``.to_`` spelled ``.processor.to_`` and
    ``to_out.0`` as ``to_out``; a text-encoder layer as ``text_encoder.text_model.<path>``;
    each with the up/down spellings below."""
    spellings = [("_lora.up.weight", "_lora.down.weight"), (".lora_B.weight", ".lora_A.weight"),
                 (".lora.up.weight", ".lora.down.weight"), (".lora_up.weight", ".lora_down.weight")]
    places = []
    for path, module in model.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            place = "unet." + path.replace(".to_", ".processor.to_")
            places.append(place[:-2] if place.endswith(".to_out.0") else place)
    for path, module in model.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in path:
            places.append("text_encoder.text_model." + path.removeprefix("text_model."))
    placed = set()
    for place in places:
        for up, down in spellings:
            if place + up in keys:
                placed |= {place + up, place + down}
                break
    return placed


def test_comfyui_layout_loads_in_diffusers_and_comfyui_places_every_key(assets, tmp_path):
    result = CliRunner().invoke(convert, [str(assets.kohya), str(tmp_path / "peft.safetensors"), "--to", "diffusers"])
    assert result.exit_code == 0 and "diffusers (load_lora_weights) and adapt read it" in result.output
    assert "ComfyUI ignores the U-Net attention modules" in result.stderr
    model = build_tiny_model()
    peft_keys = set(load_file(str(tmp_path / "peft.safetensors")))
    skipped = peft_keys - comfyui_places(peft_keys, model)
    assert skipped and all(".attn" in key for key in skipped)  # what the warning says

    result = CliRunner().invoke(
        convert, [str(assets.kohya), str(tmp_path / "comfy.safetensors"), "--to", "diffusers", "--layout", "comfyui"]
    )
    assert result.exit_code == 0 and "diffusers (load_lora_weights), ComfyUI and adapt read it" in result.output
    assert "ComfyUI ignores" not in result.stderr
    keys = set(load_file(str(tmp_path / "comfy.safetensors")))
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight" in keys
    assert len(keys) == len(peft_keys) and comfyui_places(keys, model) == keys
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(tmp_path / "comfy.safetensors"))
    assert_matches(pipe, assets.reference)
    applied = build_tiny_model()  # adapt reads the layout back to the same math
    Network.from_file(tmp_path / "comfy.safetensors", unet=applied.unet, text_encoder=applied.text_encoder).apply()
    assert_matches(applied, assets.reference)


def test_kohya_to_peft_loads_in_peft(assets, tmp_path):
    out = run(assets.kohya, tmp_path / "peft", "--to", "peft")
    model = build_tiny_model()
    for component, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        config = LoraConfig.from_pretrained(str(out / component))
        assert config.alpha_pattern or component == "text_encoder"  # the U-Net's alphas differ per block
        inject_adapter_in_model(config, module)
        state = load_file(str(out / component / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(module, {k.removeprefix("base_model.model."): v for k, v in state.items()})
        assert not result.unexpected_keys
    assert_matches(model, assets.reference)


def test_back_to_kohya_keeps_the_math(assets, tmp_path):
    original = deltas(assets.kohya)
    for fmt, name in (("diffusers", "d.safetensors"), ("peft", "p")):
        converted = run(assets.kohya, tmp_path / name, "--to", fmt)
        back = run(converted, tmp_path / f"{fmt}-kohya.safetensors", "--to", "kohya")
        restored = deltas(back)
        assert restored.keys() == original.keys()
        for module, delta in original.items():
            assert torch.allclose(restored[module], delta, atol=1e-6, rtol=1e-5), (fmt, module)
        model = build_tiny_model()
        Network.from_file(back, unet=model.unet, text_encoder=model.text_encoder).apply()
        assert_matches(model, assets.reference)


def test_uniform_alphas_round_trip_through_peft_bit_exactly(tmp_path):
    model = build_tiny_model()
    net = randomize(Network.create("lora", unet=model.unet, text_encoder=model.text_encoder,
                                   options={"network_dim": 4, "network_alpha": 1}))
    source = tmp_path / "k.safetensors"
    net.save(source)
    back = run(run(source, tmp_path / "p", "--to", "peft"), tmp_path / "back.safetensors", "--to", "kohya")
    original, restored = load_adapter(source).tensors, load_adapter(back).tensors
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[key], restored[key]) for key in original)


def test_kohya_output_folds_differing_alphas_so_diffusers_reads_it_right(assets, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = run(assets.kohya, tmp_path / "folded.safetensors", "--to", "kohya")
    assert "folding alpha/rank into lora_up" in caplog.text
    tensors = load_adapter(out).tensors
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            rank = tensors[key.replace(".alpha", ".lora_down.weight")].shape[0]
            assert float(value) == rank
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(out))
    assert_matches(pipe, assets.reference)


def test_reads_the_files_diffusers_writes(tmp_path):
    """A PEFT LoRA saved with diffusers' save_lora_weights (alpha 8 at rank 4, in its metadata)."""
    model = build_tiny_model()
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"])
    te_config = LoraConfig(r=2, lora_alpha=1, target_modules=["q_proj", "fc1"])
    model.unet.add_adapter(unet_config)
    model.text_encoder.add_adapter(te_config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in [*model.unet.named_parameters(), *model.text_encoder.named_parameters()]:
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    expected = outputs(model)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "saved",
        unet_lora_layers=get_peft_model_state_dict(model.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(model.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
    )
    saved = read_lora(tmp_path / "saved")  # the scales come from diffusers' lora_adapter_metadata
    assert saved.source_format == "diffusers"
    assert saved.scale("lora_unet_down_blocks_0_attentions_0_proj_in") == 2.0
    assert saved.scale("lora_te_text_model_encoder_layers_0_mlp_fc1") == 0.5
    back = run(tmp_path / "saved", tmp_path / "kohya.safetensors", "--to", "kohya")
    fresh = build_tiny_model()
    Network.from_file(back, unet=fresh.unet, text_encoder=fresh.text_encoder).apply()
    for got, want in zip(outputs(fresh), expected):
        assert (got - want).abs().max().item() < TOLERANCE


def test_ldm_names_are_renamed_for_kohya_output(assets, tmp_path):
    tensors = load_adapter(assets.kohya).tensors
    renamed = {key.replace("lora_unet_down_blocks_0_attentions_0_", "lora_unet_input_blocks_1_1_")
               .replace("lora_te_text_model_", "lora_te_"): value for key, value in tensors.items()}
    source = save_adapter(tmp_path / "ldm.safetensors", renamed)
    out = run(source, tmp_path / "standard.safetensors", "--to", "kohya")
    assert set(load_adapter(out).tensors) == set(tensors)


def test_errors(assets, tmp_path):
    run(assets.kohya, tmp_path / "p", "--to", "peft")
    result = CliRunner().invoke(convert, [str(assets.kohya), str(tmp_path / "p"), "--to", "peft"])
    assert isinstance(result.exception, OutputExistsError) and "--overwrite" in str(result.exception)
    run(assets.kohya, tmp_path / "p", "--to", "peft", "--overwrite")

    stray = save_adapter(tmp_path / "stray.safetensors", {
        "lora_unet_nowhere.lora_down.weight": torch.ones(1, 4), "lora_unet_nowhere.lora_up.weight": torch.ones(4, 1)})
    result = CliRunner().invoke(convert, [str(stray), str(tmp_path / "x.safetensors"), "--to", "diffusers"])
    assert isinstance(result.exception, FormatError)
    assert "1 modules match no layer of SD 1.x/2.x names (e.g. lora_unet_nowhere)" in str(result.exception)

    loha = save_adapter(tmp_path / "loha.safetensors", {
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.ones(32, 2),
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_b": torch.ones(2, 32)})
    result = CliRunner().invoke(convert, [str(loha), str(tmp_path / "y.safetensors"), "--to", "diffusers"])
    assert isinstance(result.exception, FormatError)
    assert "only LoRA modules (lora_down.weight, lora_up.weight, alpha) can be converted" in str(result.exception)


def test_peft_config_is_plain_json(assets, tmp_path):
    out = run(assets.kohya, tmp_path / "p", "--to", "peft")
    config = json.loads((out / "unet" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert "down_blocks.0.resnets.0.conv1" in config["target_modules"]
    assert config["rank_pattern"]["down_blocks.0.resnets.0.conv1"] == 2


def test_model_and_precision_options(assets, tmp_path):
    out = run(assets.kohya, tmp_path / "d.safetensors", "--to", "diffusers", "--model", "tiny", "--save_precision", "fp16")
    tensors = load_adapter(out).tensors
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float16}
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(out))
    for got, want in zip(outputs(pipe), assets.reference):
        assert (got - want).abs().max().item() < 1e-2  # fp16 weights
    result = CliRunner().invoke(convert, [str(assets.kohya), str(tmp_path / "x"), "--to", "peft", "--model", "sd_v1"])
    assert "file tensor has shape" in str(result.exception)  # a tiny-model LoRA does not fit SD 1.5's layers
