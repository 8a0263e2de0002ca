"""The optimizer's parameter groups of a network: training policy, kept out of :class:`Network`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from adapters_core.blocks import RankPlan
from adapters_core.errors import ConfigError
from adapters_core.family import ModelFamily
from adapters_core.network import Network


def check_text_encoder_lrs(text_encoder_lrs: Sequence[float], family: ModelFamily) -> None:
    """``--text_encoder_lr`` takes one value, or one per text encoder of the family (kohya's SDXL)."""
    encoders = family.text_encoder_names
    if len(text_encoder_lrs) > 1 and len(text_encoder_lrs) != len(encoders):
        raise ConfigError(
            f"--text_encoder_lr: {len(text_encoder_lrs)} values given, but a {family.description} model has "
            f"{len(encoders)} text encoder{'s' if len(encoders) != 1 else ''} ({', '.join(encoders)}); "
            f"give one value{f' or {len(encoders)}' if len(encoders) > 1 else ''}"
        )


def optimizer_param_groups(
    network: Network, text_encoder_lrs: Sequence[float], unet_lr: float | None, default_lr: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Parameter groups (and their names for logs): the text encoders' modules, then the U-Net's
    (one group per block when block-wise lr weights or ranks are given).

    ``text_encoder_lrs`` is ``--text_encoder_lr``: none (``default_lr``), one value for every
    text encoder (one group), or one value per text encoder (one group each, named after its
    component). Groups whose learning rate is 0 are dropped, as kohya does.
    """
    check_text_encoder_lrs(text_encoder_lrs, network.family)
    plan = RankPlan.from_options(network.options, network.family.blocks)
    groups: list[dict[str, Any]] = []
    descriptions: list[str] = []
    modules = list(network.adapter_modules())
    te_modules = [(name, m) for name, m in modules if network.targets[name].is_text_encoder]
    if len(text_encoder_lrs) > 1:
        for encoder, lr in zip(network.family.text_encoder_names, text_encoder_lrs):
            params = [p for _, m in network.component_modules(encoder) for p in m.parameters()]
            if params and lr > 0:
                groups.append({"params": params, "lr": lr})
                descriptions.append(encoder)
    elif te_modules:
        lr = text_encoder_lrs[0] if text_encoder_lrs else default_lr
        if lr > 0:
            groups.append({"params": [p for _, m in te_modules for p in m.parameters()], "lr": lr})
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
