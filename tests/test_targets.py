"""kohya's target set and names on SD-sized models (built on the meta device)."""

from __future__ import annotations

import pytest

from adapters_core.models import build_sd2_text_encoder, build_sd2_unet, build_sd15_text_encoder, build_sd15_unet
from adapters_core.network import Network
from adapters_core.train.param_groups import optimizer_param_groups


@pytest.fixture(scope="module")
def sd15():
    return build_sd15_unet(), build_sd15_text_encoder()


def _counts(network: Network) -> tuple[int, int]:
    names = [name for name, _ in network.adapter_modules()]
    return sum(n.startswith("lora_unet_") for n in names), sum(n.startswith("lora_te_") for n in names)


def test_lierla_and_c3lier_counts_on_sd15(sd15):
    unet, te = sd15
    assert _counts(Network.create("lora", unet=unet, text_encoder=te)) == (192, 72)
    assert _counts(Network.create("c3lier", unet=unet, text_encoder=te)) == (278, 72)
    assert _counts(Network.create("lora", unet=unet, text_encoder=te, options={"conv_dim": 4})) == (278, 72)
    assert _counts(Network.create("dylora", unet=unet, text_encoder=te, options={"network_dim": 4, "unit": 2})) == (192, 72)


def test_kohya_names_and_shapes(sd15):
    unet, te = sd15
    net = Network.create("c3lier", unet=unet, text_encoder=te, options={"network_dim": 8, "conv_dim": 4})
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] == (8, 768)
    assert shapes["lora_te_text_model_encoder_layers_11_mlp_fc2.lora_up.weight"] == (768, 8)
    assert shapes["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"] == (8, 768)
    assert shapes["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"] == (8, 1280, 1, 1)
    assert shapes["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj.lora_up.weight"] == (2560, 8)
    assert shapes["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"] == (4, 320, 3, 3)
    assert shapes["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"] == (320, 4, 1, 1)
    assert "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight" in shapes
    assert shapes["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"] == ()
    assert len(shapes) == (278 + 72) * 3


def test_sd2_text_encoder_has_23_layers_and_linear_proj():
    net = Network.create("lora", unet=build_sd2_unet(), text_encoder=build_sd2_text_encoder())
    names = {name for name, _ in net.adapter_modules()}
    assert "lora_te_text_model_encoder_layers_22_mlp_fc2" in names
    assert not any("layers_23" in n for n in names)
    proj = net.state_dict()["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    assert proj.dim() == 2  # use_linear_projection: Linear proj_in in diffusers' SD2


def test_block_lr_zero_threshold_removes_modules(sd15):
    unet, te = sd15
    net = Network.create("lora", unet=unet, text_encoder=te, options={"down_lr_weight": "zeros", "mid_lr_weight": "0"})
    unet_names = [n for n, _ in net.adapter_modules() if n.startswith("lora_unet")]
    assert len(unet_names) == 192 - 6 * 12 - 12
    assert not any("down_blocks" in n or "mid_block" in n for n in unet_names)


def test_block_dims_give_per_block_ranks(sd15):
    unet, te = sd15
    dims = ["0"] * 25
    dims[1] = "2"
    dims[24] = "6"
    net = Network.create("lora", unet=unet, text_encoder=None, options={"block_dims": ",".join(dims)})
    ranks = {n: m.lora_dim for n, m in net.adapter_modules()}
    assert set(ranks.values()) == {2, 6}
    assert all(("down_blocks_0_attentions_0" in n) == (r == 2) for n, r in ranks.items())
    assert len(ranks) == 24


def test_optimizer_param_groups_per_block(sd15):
    unet, te = sd15
    net = Network.create("lora", unet=unet, text_encoder=te, options={"up_lr_weight": "linear", "block_lr_zero_threshold": 0.0})
    groups, descriptions = optimizer_param_groups(net, text_encoder_lrs=(5e-5,), unet_lr=1e-4, default_lr=1e-3)
    assert descriptions[0] == "text_encoder" and groups[0]["lr"] == 5e-5
    lrs = {d: g["lr"] for d, g in zip(descriptions, groups)}
    assert lrs["unet block 1"] == pytest.approx(1e-4)
    assert lrs["unet block 24"] == pytest.approx(1e-4)  # up is deep->shallow, linear ends at 1
    assert "unet block 13" not in lrs  # weight 0 at block 13 (first up value) -> no module, no group
    assert lrs["unet block 19"] == pytest.approx(1e-4 * 6 / 11)
