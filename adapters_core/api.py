"""A small Python API for using adapters with a Diffusers pipeline of any installed model family.

>>> pipe = to_pipeline(load_sd_model("model.safetensors"), "euler_a")
>>> style, face = load_networks(pipe, ["style.safetensors", "face.safetensors"], [0.8, 0.5])
>>> image = pipe("a portrait").images[0]
>>> style.set_multiplier(0.3)        # patched networks can be re-weighted or removed
>>> face.remove()

Any installed adapter type works (the file's type is detected), kohya LoRA files from any
tool, diffusers LoRAs and PEFT adapter folders included; several networks stack on the same layers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from adapters_core.blocks import BlockMultipliers
from adapters_core.errors import ConfigError, FormatError
from adapters_core.network import Network


def load_networks(
    pipe: Any,
    paths: Sequence[str | os.PathLike[str]],
    multipliers: Sequence[float] | None = None,
    merge: bool = False,
    allow_unmatched: bool = False,
    block_multipliers: Sequence[BlockMultipliers | None] | None = None,
) -> list[Network]:
    """Load adapters (kohya, LyCORIS, diffusers or PEFT) onto the pipeline's U-Net and text
    encoders (its model family says which) and apply them.

    ``multipliers`` (default 1.0 each) must have one value per path. ``merge=False`` patches
    the layers' forwards (multipliers stay adjustable, :meth:`Network.remove` undoes it);
    ``merge=True`` adds each delta to the weights instead (no inference overhead, permanent).
    A key that loads nowhere stops loading unless ``allow_unmatched`` (then it is logged).
    ``block_multipliers`` (one per path, ``None`` for none) weight each file's modules per block.
    """
    count = len(paths)
    multipliers = [1.0] * count if multipliers is None else list(multipliers)
    if len(multipliers) != count:
        raise ConfigError(f"got {count} network files but {len(multipliers)} multipliers; give one multiplier per file")
    per_file = list(block_multipliers) if block_multipliers is not None else [None] * count
    networks: list[Network] = []
    for path, multiplier, blocks in zip(paths, multipliers, per_file, strict=True):
        network = Network.from_file(
            path, model=pipe, multiplier=float(multiplier),
            allow_unmatched=allow_unmatched,
        )
        network.set_block_multipliers(blocks)
        if not any(True for _ in network.adapter_modules()):
            raise FormatError(f"{path}: none of its modules matches a layer of this model; `adapt check` tells why")
        if merge:
            network.merge_to()
        else:
            network.apply()
        networks.append(network)
    return networks
