"""Which layers of a U-Net and a text encoder can carry an adapter, and their kohya names.

Names are derived from a fixed, version-independent naming: the text encoder's module
path always reads ``text_model.encoder.layers.N...`` (transformers 5 dropped the
``text_model`` level, the file format did not), so keys look the same whatever the
installed transformers version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from adapters_core.blocks import SD_BLOCKS, BlockLayout

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"

UNET_ATTENTION_CONTAINERS = frozenset({"Transformer2DModel", "SpatialTransformer"})
UNET_CONV_CONTAINERS = frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D"})
TEXT_ENCODER_CONTAINERS = frozenset(
    {"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"}
)


@dataclass(frozen=True)
class Target:
    """One candidate layer.

    ``layer_kind`` is ``linear``, ``conv1x1`` or ``conv3x3`` (any kernel larger than 1x1);
    ``in_conv_block`` is true for layers inside ResNet blocks and samplers, which kohya
    adapts only when convolution LoRA (``conv_dim``) is enabled.
    """

    name: str
    layer: nn.Module
    component: str  # the family's component name: "unet", "text_encoder", "text_encoder_2"
    block_index: int
    layer_kind: str
    in_conv_block: bool
    module_path: str = ""  # the layer's path in its model, as named_modules() gives it today
    role: str = ""  # "unet" or "text_encoder" (the component's role); the component name when empty

    @property
    def is_text_encoder(self) -> bool:
        return (self.role or self.component) == "text_encoder"


def kohya_name(prefix: str, module_path: str) -> str:
    """``lora_unet`` + ``down_blocks.0.attentions.0.proj_in`` -> ``lora_unet_down_blocks_0_attentions_0_proj_in``."""
    return f"{prefix}.{module_path}".replace(".", "_")


def block_label(name: str, layout: BlockLayout = SD_BLOCKS) -> str:
    """``TE``, ``IN00``.., ``MID``, ``OUT00``.. (LBW names; SD 1.x/2.x: IN00..IN11, OUT00..OUT11)
    for a kohya module name in ``layout``, ``UNET`` for a U-Net module outside the down/mid/up
    blocks, else ``OTHER``."""
    if name.startswith(TEXT_ENCODER_PREFIX):  # lora_te_, and SDXL's lora_te1_/lora_te2_
        return "TE"
    if not name.startswith(UNET_PREFIX + "_"):
        return "OTHER"
    label = layout.lbw_name(layout.index(name))
    if label is None:
        return "UNET"
    return "MID" if label == "M00" else label


def layer_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, nn.Conv2d):
        return "conv1x1" if tuple(layer.kernel_size) == (1, 1) else "conv3x3"
    return None


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """The weight of an adaptable layer (a Linear or Conv2d; ``nn.Module`` types attributes loosely)."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor), f"{type(layer).__name__} has no weight tensor"
    return weight


def _candidates(root: nn.Module, containers: frozenset[str]) -> Iterator[tuple[str, str, nn.Module]]:
    """(container class, full path, layer) for every Linear/Conv2d under a target container."""
    for path, module in root.named_modules():
        container = type(module).__name__
        if container not in containers:
            continue
        for child_path, child in module.named_modules():
            if child_path and layer_kind(child) is not None:
                yield container, f"{path}.{child_path}", child


def text_encoder_module_path(path: str) -> str:
    """Normalise a CLIP text-encoder module path to the ``text_model.`` form of the file format."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def unet_targets(
    unet: nn.Module,
    include_conv_blocks: bool,
    *,
    prefix: str = UNET_PREFIX,
    component: str = "unet",
    blocks: BlockLayout = SD_BLOCKS,
    path_for_name: Callable[[str], str] | None = None,
) -> list[Target]:
    """``path_for_name`` maps a layer's path to the one its kohya name is built from (the
    family's :meth:`~adapters_core.family.ModelFamily.module_path_for_name`; default: itself)."""
    containers = UNET_ATTENTION_CONTAINERS | (UNET_CONV_CONTAINERS if include_conv_blocks else frozenset())
    targets: dict[str, Target] = {}
    for container, path, layer in _candidates(unet, containers):
        name = kohya_name(prefix, path_for_name(path) if path_for_name is not None else path)
        targets.setdefault(
            name,
            Target(
                name=name,
                layer=layer,
                component=component,
                block_index=blocks.index(name),
                layer_kind=layer_kind(layer) or "",
                in_conv_block=container in UNET_CONV_CONTAINERS,
                module_path=path,
                role="unet",
            ),
        )
    return list(targets.values())


def text_encoder_targets(
    text_encoder: nn.Module, prefix: str = TEXT_ENCODER_PREFIX, component: str = "text_encoder"
) -> list[Target]:
    targets: dict[str, Target] = {}
    for _, path, layer in _candidates(text_encoder, TEXT_ENCODER_CONTAINERS):
        name = kohya_name(prefix, text_encoder_module_path(path))
        targets.setdefault(
            name,
            Target(
                name=name,
                layer=layer,
                component=component,
                block_index=-1,
                layer_kind=layer_kind(layer) or "",
                in_conv_block=False,
                module_path=path,
                role="text_encoder",
            ),
        )
    return list(targets.values())


def model_targets(
    family: ModelFamily, components: Mapping[str, nn.Module | None], include_conv_blocks: bool
) -> list[Target]:
    """The adapter targets of a family's components, in the family's component order (text
    encoders first), each in module order; components missing or ``None`` are skipped."""
    found: list[Target] = []
    for part in family.components:
        root = components.get(part.name)
        if root is None:
            continue
        if part.role == "text_encoder":
            found += text_encoder_targets(root, part.kohya_prefix, part.name)
        else:
            found += unet_targets(
                root,
                include_conv_blocks,
                prefix=part.kohya_prefix,
                component=part.name,
                blocks=family.blocks,
                path_for_name=functools.partial(family.module_path_for_name, part),
            )
    return found
