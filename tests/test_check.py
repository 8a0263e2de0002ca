"""``adapt check``: every key mapped to its layer, unmatched keys with reasons, diffusers pitfalls."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from helpers import randomize

from adapt_cli.commands.check import check
from adapt_cli.main import main
from adapters_core.features import UnsupportedFeatureError
from adapters_core.formats import save_adapter
from adapters_core.keys import ldm_unet_aliases
from adapters_core.models import build_tiny_model, write_tiny_model
from adapters_core.network import Network
from adapters_core.targets import unet_targets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    write_tiny_model(root / "model", single_file=root / "tiny.safetensors")
    model = build_tiny_model()
    net = Network.create("c3lier", unet=model.unet, text_encoder=model.text_encoder,
                         options={"network_dim": 4, "network_alpha": 2})
    randomize(net, std=0.1)
    tensors = {key: value.clone() for key, value in net.state_dict().items()}
    save_adapter(root / "full.safetensors", tensors)
    return SimpleNamespace(root=root, model=model, tensors=tensors, full=root / "full.safetensors",
                           modules=len(list(net.adapter_modules())))


def run(*args: str | Path):
    return CliRunner().invoke(check, [str(a) for a in args])


def report(*args: str | Path) -> tuple[int, dict]:
    result = run(*args, "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, json.loads(result.output)


def write(assets, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    return save_adapter(assets.root / name, tensors, metadata=metadata, overwrite=True)


def test_every_module_maps_to_its_layer(assets):
    code, data = report(assets.full, "--model", "tiny")
    assert code == 0 and data["ok"] and data["network_type"] == "lora"
    assert len(data["modules"]) == assets.modules == 129 and data["unmatched"] == [] and data["diffusers_issues"] == []
    modules = {m["module"]: m for m in data["modules"]}
    proj = modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert (proj["layer"], proj["shape"], proj["rank"], proj["alpha"], proj["block"]) == (
        "unet.down_blocks.0.attentions.0.proj_in", [32, 32, 1, 1], 4, 2.0, "IN01"
    )
    fc2 = modules["lora_te_text_model_encoder_layers_1_mlp_fc2"]
    assert (fc2["layer"], fc2["shape"], fc2["block"]) == ("text_encoder.text_model.encoder.layers.1.mlp.fc2", [32, 37], "TE")
    assert modules["lora_unet_up_blocks_0_upsamplers_0_conv"]["block"] == "OUT02"
    assert data["blocks"]["MID"]["modules"] == 18

    table = run(assets.full, "--model", "tiny")
    assert table.exit_code == 0
    assert "unet.down_blocks.0.attentions.0.proj_in" in table.output and "32x32x1x1" in table.output
    assert "OK: 129 modules match, 0 keys load nowhere" in table.output


def test_model_as_folder_or_single_file_gives_the_same_matches(assets):
    _, builtin = report(assets.full, "--model", "tiny")
    for model in (assets.root / "model", assets.root / "tiny.safetensors"):
        code, data = report(assets.full, "--model", model)
        assert code == 0 and data["model"] == str(model)
        assert data["modules"] == builtin["modules"]


def test_keys_that_load_nowhere_are_listed_with_reasons(assets):
    tensors = dict(assets.tensors)
    tensors["lora_unet_down_blocks_0_attentions_0_proj_inn.lora_down.weight"] = torch.zeros(4, 32, 1, 1)
    tensors["lora_unet_conv_in.lora_down.weight"] = torch.zeros(4, 4, 3, 3)  # no adapter target, but a layer
    tensors["lora_unet_conv_in.lora_up.weight"] = torch.zeros(32, 4, 1, 1)
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 768)
    tensors["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
    tensors["my_module.lora_down.weight"] = torch.zeros(4, 32)
    path = write(assets, "broken.safetensors", tensors)
    code, data = report(path, "--model", "tiny")
    assert code == 1 and not data["ok"]
    reasons = {miss["key"]: miss["reason"] for miss in data["unmatched"]}
    assert reasons["lora_unet_down_blocks_0_attentions_0_proj_inn.lora_down.weight"] == (
        "no such layer in tiny (closest: lora_unet_down_blocks_0_attentions_0_proj_in)"
    )
    matched = {m["module"]: m for m in data["modules"]}
    assert matched["lora_unet_conv_in"]["layer"] == "unet.conv_in" and matched["lora_unet_conv_in"]["block"] == "UNET"
    q_reason = reasons["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"]
    assert "file tensor has shape (4, 768), the layer needs (4, 32)" in q_reason and "another base model" in q_reason
    assert "SDXL text-encoder module" in reasons["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    assert reasons["my_module.lora_down.weight"] == "unknown prefix; expected lora_unet_ or lora_te_"
    assert len(data["modules"]) == assets.modules  # conv_in added, the q_proj module no longer fits
    assert data["blocks"]["TE"] == {"modules": 11, "unmatched_keys": 4}
    assert data["blocks"]["OTHER"] == {"modules": 0, "unmatched_keys": 1}

    table = run(path, "--model", "tiny", "--summary")
    assert table.exit_code == 1
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj [alpha, lora_down.weight, lora_up.weight]:" in table.output
    assert "MISMATCH: 129 modules match, 6 keys load nowhere" in table.output
    assert "unet.down_blocks" not in table.output  # --summary leaves out the per-module table


def test_a_feature_no_type_implements_is_refused_as_loading_refuses_it(assets, capsys):
    tensors = dict(assets.tensors)
    tensors["lora_unet_mid_block_attentions_0_proj_out.dora_scale"] = torch.ones(32, 1)
    path = write(assets, "dora.safetensors", tensors)
    assert main(["check", str(path), "--model", "tiny"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    message = line.removeprefix("adapt: error: ")
    assert "lora_unet_mid_block_attentions_0_proj_out.dora_scale: DoRA weight decomposition" in message
    model = build_tiny_model()
    with pytest.raises(UnsupportedFeatureError) as loading:
        Network.from_file(path, unet=model.unet, text_encoder=model.text_encoder)
    assert str(loading.value) == message


def test_default_model_is_the_one_the_metadata_names(assets):
    code, data = report(assets.full)
    assert code == 1 and data["model"] == "sd_v1" and not data["modules"]
    assert all("another base model" in miss["reason"] for miss in data["unmatched"])
    path = write(assets, "v2.safetensors", assets.tensors, {"ss_base_model_version": "sd_v2"})
    assert report(path)[1]["model"] == "sd_v2"


def _ldm_named(assets) -> dict[str, torch.Tensor]:
    unet = assets.model.unet
    standard_to_ldm = {v: k for k, v in ldm_unet_aliases(unet, unet_targets(unet, True)).items()}
    renamed = {}
    for key, value in assets.tensors.items():
        module, _, suffix = key.partition(".")
        module = standard_to_ldm.get(module, module)
        if module.startswith("lora_te_text_model_"):
            module = "lora_te_" + module[len("lora_te_text_model_"):]
        renamed[f"{module}.{suffix}"] = value
    return renamed


def test_names_adapt_accepts_but_diffusers_does_not(assets):
    path = write(assets, "ldm.safetensors", _ldm_named(assets))
    code, data = report(path, "--model", "tiny")
    assert code == 0 and len(data["modules"]) == assets.modules
    assert "lora_unet_input_blocks_1_1_proj_in" in {m["module"] for m in data["modules"]}
    issues = " | ".join(data["diffusers_issues"])
    assert "117 U-Net modules use LDM names" in issues
    assert "12 text-encoder modules lack text_model_" in issues
    assert run(path, "--model", "tiny", "--strict").exit_code == 1


def test_differing_alphas_are_a_diffusers_issue(assets):
    model = assets.model
    alphas = ",".join(str(1 + i % 2) for i in range(25))
    net = Network.create("lora", unet=model.unet, text_encoder=model.text_encoder,
                         options={"network_dim": 4, "block_alphas": alphas})
    path = write(assets, "alphas.safetensors", net.state_dict())
    code, data = report(path, "--model", "tiny")
    assert code == 0
    (issue,) = data["diffusers_issues"]
    assert "Linear/1x1 alphas: 1, 2" in issue and "alpha_pattern" in issue


def test_reshaped_proj_weights_are_a_diffusers_issue(assets):
    tensors = dict(assets.tensors)
    for key in ("lora_down.weight", "lora_up.weight"):
        full = f"lora_unet_down_blocks_0_attentions_0_proj_in.{key}"
        tensors[full] = tensors[full].flatten(1)
    path = write(assets, "flat.safetensors", tensors)
    code, data = report(path, "--model", "tiny")
    assert code == 0
    assert any("1 modules store 2-D weights for conv1x1 layers" in issue for issue in data["diffusers_issues"])
    # SD 2.x has Linear proj_in/proj_out: 4-D weights load in adapt but not in diffusers
    sd2 = write(assets, "sd2.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 320, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 1, 1, 1),
    })
    code, data = report(sd2, "--model", "sd_v2")
    assert code == 0 and data["modules"][0]["layer_kind"] == "linear" and data["modules"][0]["reshaped"]
    assert "1 modules store 4-D weights for linear layers" in data["diffusers_issues"][0]
