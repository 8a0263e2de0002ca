"""The optimizer's parameter groups of a network: training policy, kept out of :class:`Network`."""

from __future__ import annotations

from typing import Any

from torch import nn

from adapters_core.blocks import RankPlan
from adapters_core.network import Network


def optimizer_param_groups(
    network: Network, text_encoder_lr: float | None, unet_lr: float | None, default_lr: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Parameter groups (and their names for logs): the text encoders' modules, then the U-Net's
    (one group per block when block-wise lr weights or ranks are given).

    Groups whose learning rate is 0 are dropped, as kohya does.
    """
    plan = RankPlan.from_options(network.options, network.family.blocks)
    groups: list[dict[str, Any]] = []
    descriptions: list[str] = []
    modules = list(network.adapter_modules())
    te_params = [p for name, m in modules if network.targets[name].is_text_encoder for p in m.parameters()]
    if te_params:
        groups.append({"params": te_params, "lr": text_encoder_lr or default_lr})
        descriptions.append("text_encoder")
    unet_modules = [(name, m) for name, m in modules if not network.targets[name].is_text_encoder]
    base_lr = unet_lr or default_lr
    if plan.block_mode:
        by_block: dict[int, list[nn.Parameter]] = {}
        for name, module in unet_modules:
            by_block.setdefault(network.targets[name].block_index, []).extend(module.parameters())
        for block in sorted(by_block):
            lr = base_lr * plan.block_lr_weight(block)
            if lr > 0:
                groups.append({"params": by_block[block], "lr": lr})
                descriptions.append(f"unet block {block}")
    elif unet_modules:
        groups.append({"params": [p for _, m in unet_modules for p in m.parameters()], "lr": base_lr})
        descriptions.append("unet")
    return groups, descriptions
