"""Entry point of the DyLoRA type (``--network dylora``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapt_lora.family import CONV_OPTIONS, DROPOUT_OPTIONS, LoRAFamilyPlugin
from adapters_core.errors import NetworkOptionError
from adapters_core.types import ModuleSpec, NetworkOption, NetworkType

if TYPE_CHECKING:
    from adapt_dylora.module import DyLoRAModule


def check_dylora_options(options: dict[str, Any]) -> dict[str, Any]:
    """``unit`` must divide ``network_dim``; ``conv_dim``, if given, must equal it (3x3 convs
    then use ``network_alpha``, as kohya does)."""
    dim, unit = options["network_dim"], options.get("unit") or 1
    if unit <= 0 or dim % unit != 0:
        raise NetworkOptionError(f"--network_args unit={unit}: must divide --network_dim {dim}")
    conv_dim = options.get("conv_dim")
    if conv_dim:
        if conv_dim != dim:
            raise NetworkOptionError(f"--network_args conv_dim={conv_dim}: DyLoRA needs conv_dim equal to --network_dim {dim}")
        options["conv_alpha"] = options["network_alpha"]
    options["unit"] = unit
    return options


DYLORA = NetworkType(
    name="dylora",
    description="DyLoRA: trains ranks unit, 2*unit, ... dim at once (one random unit per step); "
    "saves an ordinary LoRA file from which lower ranks can be split",
    options=(NetworkOption("unit", int, 1, "rank unit sampled each step; must divide network_dim"),)
    + CONV_OPTIONS
    + DROPOUT_OPTIONS,
    kohya_module="networks.dylora",
    prepare_options=check_dylora_options,
)


def build_dylora_module(spec: ModuleSpec) -> DyLoRAModule:
    from adapt_dylora.module import build_dylora_module as build  # torch only when a module is made

    return build(spec)


# The module samples its rank unit each step (DyLoRAModule.on_train_step); files read as lora.
plugin = LoRAFamilyPlugin(DYLORA, build_dylora_module)
