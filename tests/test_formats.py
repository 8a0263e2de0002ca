"""The file format: keys, alpha, metadata, hashes, and every spelling readers meet."""

from __future__ import annotations

import hashlib
import json
import logging
import struct

import pytest
import safetensors.torch
import torch
from helpers import randomize, te_out, unet_inputs, unet_out

from adapters_core.errors import FormatError, ShapeMismatchError
from adapters_core.formats import load_adapter, save_adapter
from adapters_core.keys import ldm_unet_aliases, normalize_module_name
from adapters_core.metadata import modelspec_metadata, network_metadata
from adapters_core.models import build_sd2_unet, build_sd15_unet, build_tiny_model
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.targets import unet_targets


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    model = build_tiny_model()
    net = randomize(Network.create("c3lier", unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 4, "network_alpha": 2}))
    path = tmp_path_factory.mktemp("lora") / "a.safetensors"
    sd1 = get_registry().family("sd1")
    meta = network_metadata(network_module="networks.lora", dim=4, alpha=2.0, network_args={"conv_dim": 4}, family=sd1, v_parameterization=False)
    meta.update(modelspec_metadata(family=sd1, v_parameterization=False, title="a"))
    net.save(path, metadata=meta)
    return path, net


def _outputs(model, net=None):
    if net is not None:
        net.apply()
    return unet_out(model, unet_inputs(model)), te_out(model, torch.tensor([[0, 4, 8, 1]]))


def test_keys_alpha_and_metadata(lora_file):
    path, net = lora_file
    loaded = load_adapter(path)
    assert set(loaded.tensors) == set(net.state_dict())
    alpha = loaded.tensors["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]
    assert alpha.dim() == 0 and float(alpha) == 2.0
    md = loaded.metadata
    assert md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"
    assert md["ss_v2"] == "False" and md["ss_base_model_version"] == "sd_v1"
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4"}
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora" and md["modelspec.prediction_type"] == "epsilon"


def test_sshs_hashes_are_computed_as_kohya(lora_file):
    path, _ = lora_file
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    md = load_adapter(path).metadata
    assert md["sshs_model_hash"] == hashlib.sha256(raw[8 + header_length:]).hexdigest()
    tensors = load_adapter(path).tensors
    ss_only = {k: v for k, v in md.items() if k.startswith("ss_")}
    buffer = safetensors.torch.save(tensors, metadata=ss_only)
    assert md["sshs_legacy_hash"] == hashlib.sha256(buffer[0x100000:0x110000]).hexdigest()[:8]


def test_ckpt_and_pt_round_trip_with_weights_only(lora_file, tmp_path):
    _, net = lora_file
    for suffix in (".ckpt", ".pt"):
        net.save(tmp_path / f"a{suffix}")
        loaded = load_adapter(tmp_path / f"a{suffix}")
        assert all(torch.equal(loaded.tensors[k], v) for k, v in net.state_dict().items())


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(FormatError, match="weights_only=True"):
        load_adapter(tmp_path / "evil.ckpt")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01", "not a safetensors file"),
        (struct.pack("<Q", 10_000) + b"{}", "corrupt safetensors header \\(declares 10000 bytes"),
        (struct.pack("<Q", 5) + b"{nope", "corrupt safetensors header \\(not valid JSON\\)"),
    ],
)
def test_corrupt_files_give_one_line(tmp_path, payload, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(FormatError, match=message) as info:
        load_adapter(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_other_errors(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        load_adapter(tmp_path / "missing.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FormatError, match="unknown file type '.txt'"):
        load_adapter(tmp_path / "x.txt")
    with pytest.raises(FormatError, match="NaN or infinite"):
        save_adapter(tmp_path / "nan.safetensors", {"a.lora_up.weight": torch.tensor([float("nan")])})
    assert not (tmp_path / "nan.safetensors").exists()


def test_existing_output_needs_overwrite(lora_file, tmp_path):
    _, net = lora_file
    net.save(tmp_path / "o.safetensors")
    before = (tmp_path / "o.safetensors").read_bytes()
    with pytest.raises(Exception, match="output exists; pass --overwrite"):
        net.save(tmp_path / "o.safetensors")
    assert (tmp_path / "o.safetensors").read_bytes() == before
    net.save(tmp_path / "o.safetensors", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]  # no temporary left


def test_loaded_network_reproduces_outputs(lora_file):
    path, net = lora_file
    source = build_tiny_model()
    net_copy = Network.from_file(path, unet=source.unet, text_encoder=source.text_encoder)
    assert net_copy.network_type.name == "lora" and not net_copy.unmatched_keys
    reference = _outputs(source, net_copy)
    again = build_tiny_model()
    other = Network.from_weights(load_adapter(path).tensors, unet=again.unet, text_encoder=again.text_encoder)
    for a, b in zip(reference, _outputs(again, other)):
        assert torch.equal(a, b)


def test_file_without_alpha_means_alpha_equals_rank(lora_file):
    path, _ = lora_file
    tensors = {k: v for k, v in load_adapter(path).tensors.items() if not k.endswith(".alpha")}
    model = build_tiny_model()
    net = Network.from_weights(tensors, unet=model.unet, text_encoder=model.text_encoder)
    assert {m.scale for _, m in net.adapter_modules()} == {1.0}


def test_te_names_without_text_model_and_unknown_keys_are_reported(lora_file, caplog):
    path, _ = lora_file
    tensors = load_adapter(path).tensors
    renamed = {k.replace("lora_te_text_model_", "lora_te_"): v for k, v in tensors.items()}
    renamed["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 4)
    renamed["lora_unet_down_blocks_0_attentions_0_proj_in.lora_extra"] = torch.ones(1, 32)  # a suffix LoRA does not write
    model, reference = build_tiny_model(), build_tiny_model()
    with caplog.at_level(logging.WARNING):
        net = Network.from_weights(renamed, unet=model.unet, text_encoder=model.text_encoder,
                                   source="renamed.safetensors", allow_unmatched=True)
    assert sorted(net.unmatched_keys) == [
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_extra",
        "lora_unet_no_such_layer.lora_down.weight",
    ]
    assert "renamed.safetensors: 2 keys load nowhere and were not applied" in caplog.text
    ref_net = Network.from_weights(tensors, unet=reference.unet, text_encoder=reference.text_encoder)
    for a, b in zip(_outputs(model, net), _outputs(reference, ref_net)):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def sd15_aliases():
    unet = build_sd15_unet()
    return ldm_unet_aliases(unet, unet_targets(unet, include_conv_blocks=True))


@pytest.mark.parametrize(
    ("ldm", "diffusers"),
    [
        ("lora_unet_input_blocks_1_1_proj_in", "lora_unet_down_blocks_0_attentions_0_proj_in"),
        ("lora_unet_input_blocks_2_1_transformer_blocks_0_attn1_to_q", "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q"),
        ("lora_unet_input_blocks_2_0_in_layers_2", "lora_unet_down_blocks_0_resnets_1_conv1"),
        ("lora_unet_input_blocks_4_0_skip_connection", "lora_unet_down_blocks_1_resnets_0_conv_shortcut"),
        ("lora_unet_input_blocks_3_0_op", "lora_unet_down_blocks_0_downsamplers_0_conv"),
        ("lora_unet_input_blocks_5_0_emb_layers_1", "lora_unet_down_blocks_1_resnets_1_time_emb_proj"),
        ("lora_unet_middle_block_1_proj_out", "lora_unet_mid_block_attentions_0_proj_out"),
        ("lora_unet_middle_block_2_out_layers_3", "lora_unet_mid_block_resnets_1_conv2"),
        ("lora_unet_output_blocks_2_1_conv", "lora_unet_up_blocks_0_upsamplers_0_conv"),
        ("lora_unet_output_blocks_5_1_transformer_blocks_0_ff_net_2", "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2"),
        ("lora_unet_output_blocks_8_2_conv", "lora_unet_up_blocks_2_upsamplers_0_conv"),
        ("lora_unet_output_blocks_11_0_in_layers_2", "lora_unet_up_blocks_3_resnets_2_conv1"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_down_blocks_0_attentions_0_proj_in"),
    ],
)
def test_ldm_names_are_normalised(sd15_aliases, ldm, diffusers):
    assert normalize_module_name(ldm, sd15_aliases) == diffusers
    assert normalize_module_name(ldm) == diffusers  # the SD layout is the default


def test_ldm_named_file_loads_onto_the_same_layers(lora_file):
    path, _ = lora_file
    tensors = load_adapter(path).tensors
    to_ldm = {
        "lora_unet_down_blocks_0_attentions_0_": "lora_unet_input_blocks_1_1_",
        "lora_unet_down_blocks_0_resnets_1_conv1": "lora_unet_input_blocks_2_0_in_layers_2",
        "lora_unet_up_blocks_0_upsamplers_0_conv": "lora_unet_output_blocks_2_1_conv",
        "lora_unet_up_blocks_1_attentions_2_": "lora_unet_output_blocks_5_1_",
    }
    renamed = {}
    for key, value in tensors.items():
        for old, new in to_ldm.items():
            key = key.replace(old, new)
        renamed[key] = value
    assert any(k.startswith("lora_unet_input_blocks_1_1_") for k in renamed)
    model = build_tiny_model()
    net = Network.from_weights(renamed, unet=model.unet, text_encoder=model.text_encoder)
    assert not net.unmatched_keys and set(net.state_dict()) == set(tensors)


def test_4d_proj_weights_load_onto_linear_proj_layers():
    unet = build_sd2_unet()  # Linear proj_in / proj_out (use_linear_projection)
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }
    net = Network.from_weights(tensors, unet=unet)
    module = net.lora_unet_down_blocks_0_attentions_0_proj_in
    assert module.lora_down.weight.shape == (4, 320)
    assert torch.equal(module.lora_down.weight, tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"][:, :, 0, 0])


def test_adapter_for_another_model_is_a_shape_error():
    model = build_tiny_model()
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1),
    }
    with pytest.raises(ShapeMismatchError, match="proj_in.lora_down.weight: file tensor has shape \\(4, 320, 1, 1\\), the layer needs \\(4, 32, 1, 1\\)"):
        Network.from_weights(tensors, unet=model.unet)


def test_unrecognised_file_is_a_format_error():
    with pytest.raises(FormatError, match="no installed network type recognises its keys"):
        Network.from_weights({"foo.bar": torch.zeros(1)}, unet=build_tiny_model().unet)
