"""The 25-block index of the SD U-Net and the block-wise settings built on it.

Blocks: 0..11 down (LDM ``input_blocks``; 0 is ``conv_in`` and never adapted), 12 the mid
block, 13..24 up (LDM ``output_blocks``). The text encoder has index -1 and ignores every
block setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters_core.errors import BlockSpecError

NUM_DOWN_BLOCKS = 12
NUM_MID_BLOCKS = 1
NUM_BLOCKS = NUM_DOWN_BLOCKS + NUM_MID_BLOCKS + NUM_DOWN_BLOCKS  # 25
MID_BLOCK_INDEX = NUM_DOWN_BLOCKS

_BLOCK_RE = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")

T = TypeVar("T")


def block_index(name: str) -> int:
    """Block index (0..24) of a kohya U-Net module name, -1 when it has none (text encoder)."""
    if "mid_block_" in name:
        return MID_BLOCK_INDEX
    match = _BLOCK_RE.search(name)
    if match is None:
        return -1
    direction, level, kind, position = match.groups()
    index = 3 * int(level) + (2 if kind in ("upsamplers", "downsamplers") else int(position))
    return 1 + index if direction == "down" else NUM_DOWN_BLOCKS + NUM_MID_BLOCKS + index


def _preset(name: str, count: int) -> list[float]:
    """An lr-weight preset ``sine|cosine|linear|reverse_linear|zeros`` with optional ``+offset``."""
    base, _, offset_text = name.partition("+")
    try:
        offset = float(offset_text) if offset_text else 0.0
    except ValueError:
        raise BlockSpecError(f"lr weight preset '{name}': offset after '+' must be a number") from None
    last = count - 1
    curves: dict[str, Callable[[int], float]] = {
        "sine": lambda i: math.sin(math.pi / 2 * i / last),
        "cosine": lambda i: math.sin(math.pi / 2 * (last - i) / last),
        "linear": lambda i: i / last,
        "reverse_linear": lambda i: (last - i) / last,
        "zeros": lambda i: 0.0,
    }
    if base not in curves:
        raise BlockSpecError(
            f"lr weight preset '{base}' is unknown; use one of {', '.join(curves)} (optionally +offset) "
            f"or {count} comma-separated numbers"
        )
    return [curves[base](i) + offset for i in range(count)]


def _lr_part(option: str, text: Any, count: int) -> list[float] | None:
    if text is None or text == "":
        return None
    if isinstance(text, (list, tuple)):
        items = [str(v) for v in text]
    elif "," not in str(text) and count > 1:
        return _preset(str(text).strip(), count)
    else:
        items = str(text).split(",")
    try:
        values = [float(v) if v.strip() else 0.0 for v in items]
    except ValueError:
        raise BlockSpecError(f"{option}: expected {count} comma-separated numbers or a preset, got '{text}'") from None
    if len(values) != count:
        raise BlockSpecError(f"{option}: expected {count} values, got {len(values)}")
    return values


def lr_weights(options: Mapping[str, Any]) -> list[float] | None:
    """The 25 block lr weights from ``down_lr_weight``/``mid_lr_weight``/``up_lr_weight``.

    ``None`` when no lr weight was given. Missing parts are all 1.0; weights at or below
    ``block_lr_zero_threshold`` (default 0) become 0, which removes those blocks' modules.
    """
    down = _lr_part("down_lr_weight", options.get("down_lr_weight"), NUM_DOWN_BLOCKS)
    mid = _lr_part("mid_lr_weight", options.get("mid_lr_weight"), NUM_MID_BLOCKS)
    up = _lr_part("up_lr_weight", options.get("up_lr_weight"), NUM_DOWN_BLOCKS)
    if down is None and mid is None and up is None:
        return None
    threshold = float(options.get("block_lr_zero_threshold") or 0.0)
    weights = (down or [1.0] * NUM_DOWN_BLOCKS) + (mid or [1.0]) + (up or [1.0] * NUM_DOWN_BLOCKS)
    return [0.0 if w <= threshold else w for w in weights]


def block_values(option: str, text: Any, cast: Callable[[str], T]) -> list[T] | None:
    """Parse a block-wise list (``block_dims`` ...): exactly 25 comma-separated values."""
    if text is None or text == "":
        return None
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    if len(items) != NUM_BLOCKS:
        raise BlockSpecError(f"{option}: expected exactly {NUM_BLOCKS} comma-separated values, got {len(items)}")
    try:
        return [cast(str(v).strip()) for v in items]
    except ValueError:
        raise BlockSpecError(f"{option}: every value must be a number, got '{text}'") from None


@dataclass(frozen=True)
class RankPlan:
    """Rank and alpha for every candidate layer, from the LoRA-family options.

    Linear and 1x1 layers take ``network_dim``/``network_alpha`` (``block_dims``/
    ``block_alphas`` per block); 3x3 convs take ``conv_dim``/``conv_alpha``
    (``conv_block_dims``/``conv_block_alphas``). Rank 0 means "no module".
    """

    network_dim: int
    network_alpha: float
    conv_dim: int
    conv_alpha: float
    block_dims: list[int] | None = None
    block_alphas: list[float] | None = None
    conv_block_dims: list[int] | None = None
    conv_block_alphas: list[float] | None = None
    lr_weights: list[float] | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RankPlan:
        dim = int(options.get("network_dim") or 4)
        alpha = options.get("network_alpha")
        alpha = 1.0 if alpha is None else float(alpha)  # kohya's default; 0 means alpha = rank
        conv_dim = int(options.get("conv_dim") or 0)
        conv_alpha = options.get("conv_alpha")
        conv_alpha = 1.0 if conv_alpha is None else float(conv_alpha)
        conv_block_dims = block_values("conv_block_dims", options.get("conv_block_dims"), int)
        return cls(
            network_dim=dim,
            network_alpha=alpha,
            conv_dim=conv_dim,
            conv_alpha=conv_alpha,
            block_dims=block_values("block_dims", options.get("block_dims"), int),
            block_alphas=block_values("block_alphas", options.get("block_alphas"), float),
            conv_block_dims=conv_block_dims,
            conv_block_alphas=block_values("conv_block_alphas", options.get("conv_block_alphas"), float),
            lr_weights=lr_weights(options),
        )

    @property
    def conv_enabled(self) -> bool:
        """Whether ResNet blocks and samplers are targets at all (kohya: conv_dim given)."""
        return self.conv_dim > 0 or bool(self.conv_block_dims and any(self.conv_block_dims))

    @property
    def block_mode(self) -> bool:
        return self.lr_weights is not None or self.block_dims is not None

    def dim_alpha(self, block: int, layer_kind: str) -> tuple[int, float]:
        """Rank and alpha for a layer of ``layer_kind`` in ``block`` (-1: text encoder)."""
        if layer_kind == "conv3x3":
            dim, alpha = self.conv_dim, self.conv_alpha
            if block >= 0 and self.conv_block_dims is not None:
                dim = self.conv_block_dims[block]
            if block >= 0 and self.conv_block_alphas is not None:
                alpha = self.conv_block_alphas[block]
        else:
            dim, alpha = self.network_dim, self.network_alpha
            if block >= 0 and self.block_dims is not None:
                dim = self.block_dims[block]
            if block >= 0 and self.block_alphas is not None:
                alpha = self.block_alphas[block]
        if block >= 0 and self.lr_weights is not None and self.lr_weights[block] == 0.0:
            dim = 0
        return dim, alpha

    def block_lr_weight(self, block: int) -> float:
        if block < 0 or self.lr_weights is None:
            return 1.0
        return self.lr_weights[block]
