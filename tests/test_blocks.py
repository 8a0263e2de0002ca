"""The 25-block index, lr-weight presets and block-wise dims/alphas."""

from __future__ import annotations

import math

import pytest

from adapters_core.blocks import RankPlan, block_index, lr_weights
from adapters_core.errors import BlockSpecError


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("lora_unet_down_blocks_0_attentions_0_proj_in", 1),
        ("lora_unet_down_blocks_0_attentions_1_proj_in", 2),
        ("lora_unet_down_blocks_0_downsamplers_0_conv", 3),
        ("lora_unet_down_blocks_3_resnets_1_conv2", 11),
        ("lora_unet_mid_block_attentions_0_proj_in", 12),
        ("lora_unet_up_blocks_0_resnets_0_conv1", 13),
        ("lora_unet_up_blocks_0_upsamplers_0_conv", 15),
        ("lora_unet_up_blocks_1_attentions_0_proj_out", 16),
        ("lora_unet_up_blocks_3_attentions_2_proj_out", 24),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1", -1),
    ],
)
def test_block_index(name, index):
    assert block_index(name) == index


def test_presets_and_offset():
    weights = lr_weights({"down_lr_weight": "sine", "up_lr_weight": "cosine+.5", "mid_lr_weight": "2"})
    assert len(weights) == 25
    assert weights[0] == 0.0  # sin(0) = 0 -> at threshold 0 -> 0
    assert weights[11] == pytest.approx(1.0)
    assert weights[5] == pytest.approx(math.sin(math.pi / 2 * 5 / 11))
    assert weights[12] == 2.0
    assert weights[13] == pytest.approx(1.5) and weights[24] == pytest.approx(0.5)
    assert lr_weights({"down_lr_weight": "linear"})[1:12] == pytest.approx([i / 11 for i in range(1, 12)])
    assert lr_weights({"down_lr_weight": "reverse_linear"})[0] == pytest.approx(1.0)
    assert lr_weights({"up_lr_weight": "zeros+0.25"})[13:] == [0.25] * 12
    assert lr_weights({}) is None


def test_threshold_zeroes_blocks_and_missing_parts_are_one():
    weights = lr_weights({"down_lr_weight": "linear", "block_lr_zero_threshold": "0.3"})
    assert weights[:4] == [0.0] * 4 and weights[4] > 0.3
    assert weights[12:] == [1.0] * 13


def test_explicit_lists_and_errors():
    weights = lr_weights({"down_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,", "mid_lr_weight": "0.5"})
    assert weights[11] == 0.0 and weights[12] == 0.5
    with pytest.raises(BlockSpecError, match="down_lr_weight: expected 12 values, got 3"):
        lr_weights({"down_lr_weight": "1,2,3"})
    with pytest.raises(BlockSpecError, match="preset 'sinus' is unknown"):
        lr_weights({"down_lr_weight": "sinus"})


def test_block_dims_need_exactly_25_values():
    with pytest.raises(BlockSpecError, match="block_dims: expected exactly 25 comma-separated values, got 24"):
        RankPlan.from_options({"network_dim": 4, "block_dims": ",".join(["4"] * 24)})
    with pytest.raises(BlockSpecError, match="conv_block_alphas: expected exactly 25"):
        RankPlan.from_options({"network_dim": 4, "conv_block_alphas": "1,2"})


def test_rank_plan_resolves_per_block():
    dims = ",".join(str(i) for i in range(25))
    plan = RankPlan.from_options(
        {"network_dim": 8, "network_alpha": 4, "block_dims": dims, "conv_dim": 2, "conv_block_alphas": ",".join(["3"] * 25)}
    )
    assert plan.dim_alpha(5, "linear") == (5, 4.0)
    assert plan.dim_alpha(-1, "linear") == (8, 4.0)  # the text encoder ignores block settings
    assert plan.dim_alpha(5, "conv3x3") == (2, 3.0)
    assert plan.conv_enabled and plan.block_mode
    assert RankPlan.from_options({}).dim_alpha(3, "linear") == (4, 1.0)  # kohya defaults
