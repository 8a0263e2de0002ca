"""Value types shared by the core and the plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class NetworkOption:
    """One ``--network_args`` option of a type: its name, Python type, default and help."""

    name: str
    type: type
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class NetworkType:
    """An adapter type as a plugin registers it.

    ``kohya_module`` is what files record in ``ss_network_module`` (``networks.lora``).
    ``prepare_options`` validates the parsed options and fills type-specific defaults; it
    raises :class:`adapters_core.errors.NetworkOptionError` for bad combinations.
    """

    name: str
    description: str
    options: tuple[NetworkOption, ...] = ()
    kohya_module: str = ""
    aliases: tuple[str, ...] = ()
    prepare_options: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Filled in by the host on registration, not by the plugin.
    distribution: str = field(default="", compare=False)
    version: str = field(default="", compare=False)

    def option_defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}


OptionsMapping = Mapping[str, Any]


@dataclass(frozen=True)
class ModuleSpec:
    """What the core resolved for one adapter module: the ``create_module`` and
    ``state_dict_keys`` hooks receive it.

    ``name`` is the kohya module name (``lora_unet_down_blocks_0_attentions_0_proj_in``),
    ``layer`` the ``nn.Linear``/``nn.Conv2d`` it adapts. ``rank`` and ``alpha`` are this
    module's (block-wise ranks applied; when loading a file, what
    ``module_options_from_tensors`` read from its tensors; ``alpha`` ``None`` means alpha =
    rank). ``block_index`` is 0..24 for the U-Net and -1 for the text encoder; ``layer_kind``
    is ``"linear"``, ``"conv1x1"`` or ``"conv3x3"``; ``in_conv_block`` is true inside ResNet
    blocks and samplers. ``options`` are the network's options after the type's
    ``prepare_options`` (``--network_args`` such as ``dropout`` or DyLoRA's ``unit``).
    """

    name: str
    layer: nn.Module
    rank: int
    alpha: float | None
    block_index: int
    layer_kind: str
    in_conv_block: bool
    options: OptionsMapping = field(default_factory=dict)
