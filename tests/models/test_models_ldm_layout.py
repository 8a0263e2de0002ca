"""Diffusers <-> LDM state-dict conversion: exact round trips, agreement with diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders import single_file_utils
from transformers import CLIPTextConfig, CLIPTextModel

from adapters_core.errors import FormatError
from adapters_core.models import SDModel
from adapters_core.models.bundled import load_config
from adapters_core.models.ldm_layout import (
    TE_V2_PREFIX,
    UNetLayout,
    text_encoder_from_ldm,
    text_encoder_to_ldm,
    unet_from_ldm,
    unet_to_ldm,
    vae_from_ldm,
    vae_to_ldm,
)


def _bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_unet_round_trip_is_bitwise(tiny: SDModel) -> None:
    state = tiny.unet.state_dict()
    ldm = unet_to_ldm(state, UNetLayout.from_config(tiny.unet.config))
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in ldm
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm  # upsampler after an UpBlock2D
    _bitwise(unet_from_ldm(ldm, tiny.unet.config), state)


def test_unet_layout_from_keys_equals_layout_from_config(tiny: SDModel) -> None:
    assert UNetLayout.from_diffusers_keys(tiny.unet.state_dict()) == UNetLayout.from_config(tiny.unet.config)


def test_unet_three_levels_round_trip() -> None:
    config = {
        **load_config("tiny", "unet"),
        "block_out_channels": [32, 32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    torch.manual_seed(1)
    state = UNet2DConditionModel.from_config(config).state_dict()
    ldm = unet_to_ldm(state)
    _bitwise(unet_from_ldm(ldm, config), state)
    _bitwise(single_file_utils.convert_ldm_unet_checkpoint(ldm, config), state)


def test_unet_and_vae_agree_with_diffusers_converters(tiny: SDModel) -> None:
    unet, vae = tiny.unet.state_dict(), tiny.vae.state_dict()
    _bitwise(single_file_utils.convert_ldm_unet_checkpoint(unet_to_ldm(unet), dict(tiny.unet.config)), unet)
    _bitwise(single_file_utils.convert_ldm_vae_checkpoint(vae_to_ldm(vae), dict(tiny.vae.config)), vae)


def test_sd_unet_keys_round_trip_on_meta() -> None:
    for name in ("sd_v1", "sd_v2"):
        config = load_config(name, "unet")
        with torch.device("meta"):
            state = UNet2DConditionModel.from_config(config).state_dict()
        ldm = unet_to_ldm(state, UNetLayout.from_config(config))
        assert "model.diffusion_model.output_blocks.8.2.conv.weight" in ldm
        assert "model.diffusion_model.input_blocks.11.0.out_layers.3.weight" in ldm
        back = unet_from_ldm(ldm, config)
        assert back.keys() == state.keys()
        assert all(back[k].shape == state[k].shape for k in state)


def test_vae_round_trip_is_bitwise_and_attention_is_conv(tiny: SDModel) -> None:
    state = tiny.vae.state_dict()
    ldm = vae_to_ldm(state)
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in ldm  # decoder levels reversed
    _bitwise(vae_from_ldm(ldm, tiny.vae.config), state)


def test_text_encoder_v1_round_trip_and_old_layout(tiny: SDModel) -> None:
    state = tiny.text_encoder.state_dict()
    ldm = text_encoder_to_ldm(state, v2=False)
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in ldm
    _bitwise(text_encoder_from_ldm(ldm, v2=False, num_layers=2), state)
    old = {k.replace("text_model.", ""): v for k, v in ldm.items()}  # checkpoints without text_model.
    _bitwise(text_encoder_from_ldm(old, v2=False, num_layers=2), state)


def _tiny_open_clip(layers: int) -> CLIPTextModel:
    torch.manual_seed(3)
    config = CLIPTextConfig(
        vocab_size=194, hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(config)


def test_text_encoder_v2_drops_last_layer_and_refuses_back() -> None:
    full = _tiny_open_clip(3)  # stands in for OpenCLIP's 24 layers
    ldm = text_encoder_to_ldm(full.state_dict(), v2=True)
    assert ldm[TE_V2_PREFIX + "transformer.resblocks.2.attn.in_proj_weight"].shape == (96, 32)
    assert ldm[TE_V2_PREFIX + "positional_embedding"].shape == (77, 32)
    ldm[TE_V2_PREFIX + "text_projection"] = torch.randn(32, 32)
    ldm[TE_V2_PREFIX + "logit_scale"] = torch.tensor(4.6)

    penultimate = _tiny_open_clip(2)  # SD2 keeps 23 of 24 layers
    penultimate.load_state_dict(text_encoder_from_ldm(ldm, v2=True, num_layers=2))
    for key, value in penultimate.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key

    again = text_encoder_to_ldm(penultimate.state_dict(), v2=True)
    assert not any(".resblocks.2." in k for k in again) and TE_V2_PREFIX + "text_projection" not in again
    for key, value in again.items():
        assert torch.equal(value, ldm[key]), key
    # the fused layout agrees with diffusers' OpenCLIP converter (which names keys text_model.*)
    theirs = single_file_utils.convert_open_clip_checkpoint(penultimate, ldm)
    ours = text_encoder_from_ldm(ldm, v2=True, num_layers=3)
    for key, value in ours.items():
        assert torch.equal(theirs["text_model." + key], value), key


def test_proj_in_follows_use_linear_projection(tiny: SDModel) -> None:
    ldm = unet_to_ldm(tiny.unet.state_dict())
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert ldm[key].ndim == 4
    linear = unet_from_ldm(ldm, {**tiny.unet.config, "use_linear_projection": True})
    assert linear["down_blocks.0.attentions.0.proj_in.weight"].shape == (32, 32)
    conv_again = unet_from_ldm(unet_to_ldm(linear), tiny.unet.config)
    assert torch.equal(conv_again["down_blocks.0.attentions.0.proj_in.weight"], ldm[key])


def test_unknown_keys_are_refused(tiny: SDModel) -> None:
    with pytest.raises(FormatError, match="class_embedding.weight"):
        unet_to_ldm({**tiny.unet.state_dict(), "class_embedding.weight": torch.zeros(1)})
    ldm = unet_to_ldm(tiny.unet.state_dict())
    ldm["model.diffusion_model.input_blocks.9.0.in_layers.0.weight"] = torch.zeros(1)
    with pytest.raises(FormatError, match="input_blocks.9.0"):
        unet_from_ldm(ldm, tiny.unet.config)
