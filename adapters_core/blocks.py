"""Block layouts of a U-Net and the block-wise settings built on them.

A model family names its :class:`BlockLayout`. SD 1.x/2.x's (:data:`SD_BLOCKS`) has 25
blocks: 0..11 down (LDM ``input_blocks``; 0 is ``conv_in`` and never adapted), 12 the mid
block, 13..24 up (LDM ``output_blocks``). The text encoder has index -1 and ignores every
block setting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from adapters_core.errors import BlockSpecError

NUM_DOWN_BLOCKS = 12
NUM_MID_BLOCKS = 1
NUM_BLOCKS = NUM_DOWN_BLOCKS + NUM_MID_BLOCKS + NUM_DOWN_BLOCKS  # 25
MID_BLOCK_INDEX = NUM_DOWN_BLOCKS
# LoRA Block Weight's 17-value form for SD 1.x/2.x: BASE and the blocks a LierLa LoRA adapts.
LBW17_NAMES = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
               *(f"OUT{i:02d}" for i in range(3, NUM_DOWN_BLOCKS)))

_BLOCK_RE = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")

T = TypeVar("T")


def block_index(name: str) -> int:
    """SD block index (0..24) of a kohya U-Net module name, -1 when it has none (text encoder)."""
    if "mid_block_" in name:
        return MID_BLOCK_INDEX
    match = _BLOCK_RE.search(name)
    if match is None:
        return -1
    direction, level, kind, position = match.groups()
    index = 3 * int(level) + (2 if kind in ("upsamplers", "downsamplers") else int(position))
    return 1 + index if direction == "down" else NUM_DOWN_BLOCKS + NUM_MID_BLOCKS + index


@dataclass(frozen=True)
class BlockLayout:
    """How many down, mid and up blocks a U-Net has, and which block a module is in.

    ``before``/``after`` count blocks outside the down/mid/up lr weights that block-wise
    ranks still list (kohya's SDXL layout: the embeddings first, ``out`` last); their lr
    weight is 1.
    """

    down: int
    mid: int
    up: int
    index: Callable[[str], int]
    before: int = 0
    after: int = 0
    lbw_short: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return self.before + self.down + self.mid + self.up + self.after

    def lbw_name(self, block: int) -> str | None:
        """LoRA Block Weight's name of ``block``: ``INnn``, ``M00`` (every mid block), ``OUTnn``;
        ``None`` outside the down/mid/up blocks and for the text encoder (-1)."""
        index = block - self.before
        if index < 0:
            return None
        if index < self.down:
            return f"IN{index:02d}"
        if index < self.down + self.mid:
            return "M00"
        index -= self.down + self.mid
        return f"OUT{index:02d}" if index < self.up else None

    @property
    def lbw_names(self) -> tuple[str, ...]:
        """``BASE`` and every block's LBW name (SD 1.x/2.x: 26)."""
        return ("BASE", *(f"IN{i:02d}" for i in range(self.down)), "M00", *(f"OUT{i:02d}" for i in range(self.up)))

    @property
    def lbw_forms(self) -> tuple[tuple[str, ...], ...]:
        """The block-weight lists this layout takes: every block with BASE, without it, and LBW's short form."""
        forms = (self.lbw_names, self.lbw_names[1:])
        return (*forms, self.lbw_short) if self.lbw_short else forms


SD_BLOCKS = BlockLayout(NUM_DOWN_BLOCKS, NUM_MID_BLOCKS, NUM_DOWN_BLOCKS, block_index, lbw_short=LBW17_NAMES)


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


def lr_weights(options: Mapping[str, Any], layout: BlockLayout = SD_BLOCKS) -> list[float] | None:
    """The block lr weights (``layout.count``: 25 for SD) from ``down_lr_weight``/``mid_lr_weight``/``up_lr_weight``.

    ``None`` when no lr weight was given. Missing parts are all 1.0; weights at or below
    ``block_lr_zero_threshold`` (default 0) become 0, which removes those blocks' modules.
    """
    down = _lr_part("down_lr_weight", options.get("down_lr_weight"), layout.down)
    mid = _lr_part("mid_lr_weight", options.get("mid_lr_weight"), layout.mid)
    up = _lr_part("up_lr_weight", options.get("up_lr_weight"), layout.up)
    if down is None and mid is None and up is None:
        return None
    threshold = float(options.get("block_lr_zero_threshold") or 0.0)
    weights = (down or [1.0] * layout.down) + (mid or [1.0] * layout.mid) + (up or [1.0] * layout.up)
    weights = [0.0 if w <= threshold else w for w in weights]
    return [1.0] * layout.before + weights + [1.0] * layout.after


def block_values(
    option: str, text: Any, cast: Callable[[str], T], layout: BlockLayout = SD_BLOCKS
) -> list[T] | None:
    """Parse a block-wise list (``block_dims`` ...): exactly one value per block (25 for SD)."""
    if text is None or text == "":
        return None
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    if len(items) != layout.count:
        raise BlockSpecError(f"{option}: expected exactly {layout.count} comma-separated values, got {len(items)}")
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
    def from_options(cls, options: Mapping[str, Any], layout: BlockLayout = SD_BLOCKS) -> RankPlan:
        """The plan of a network's options; block-wise lists must have one value per block of ``layout``."""
        dim = int(options.get("network_dim") or 4)
        alpha = options.get("network_alpha")
        alpha = 1.0 if alpha is None else float(alpha)  # kohya's default; 0 means alpha = rank
        conv_dim = int(options.get("conv_dim") or 0)
        conv_alpha = options.get("conv_alpha")
        conv_alpha = 1.0 if conv_alpha is None else float(conv_alpha)
        conv_block_dims = block_values("conv_block_dims", options.get("conv_block_dims"), int, layout)
        return cls(
            network_dim=dim,
            network_alpha=alpha,
            conv_dim=conv_dim,
            conv_alpha=conv_alpha,
            block_dims=block_values("block_dims", options.get("block_dims"), int, layout),
            block_alphas=block_values("block_alphas", options.get("block_alphas"), float, layout),
            conv_block_dims=conv_block_dims,
            conv_block_alphas=block_values("conv_block_alphas", options.get("conv_block_alphas"), float, layout),
            lr_weights=lr_weights(options, layout),
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


# -- block multipliers at apply time (A1111 "LoRA Block Weight", kohya's --lbws) -----------
# LBW names the text encoder BASE and the U-Net blocks INnn, M00, OUTnn (BlockLayout.lbw_name).
# A layout takes its full list (BASE first, or without it) and LBW's short form, which lists
# BASE and the blocks a LierLa LoRA adapts (SD 1.x/2.x: 17 values); blocks the short form
# leaves out keep 1.0, as in kohya's svd_merge_lora.
# The LoRA Block Weight extension's built-in presets (SD's 17-value form; the uniform ones
# apply to every layout).
BLOCK_WEIGHT_PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
}


@dataclass(frozen=True)
class BlockFactors:
    """Block multipliers resolved for one layout: the text encoder's factor (LBW's BASE)
    and one per LBW block name; a block without a name (SDXL's embeddings) keeps 1.0."""

    layout: BlockLayout
    text_encoder: float
    by_name: Mapping[str, float]

    def factor(self, block: int) -> float:
        """The factor of a module in ``block`` (-1: text encoder)."""
        if block < 0:
            return self.text_encoder
        name = self.layout.lbw_name(block)
        return 1.0 if name is None else self.by_name.get(name, 1.0)

    def for_module(self, name: str) -> float:
        """The factor of a module given by its kohya name."""
        return self.factor(self.layout.index(name))


@dataclass(frozen=True)
class BlockMultipliers:
    """A parsed ``--block_weights`` spec: its numbers, not yet tied to a layout (the count
    says which form it is once the adapter's model family is known)."""

    values: tuple[float, ...]
    spec: str = ""
    option: str = "--block_weights"

    def factors(self, layout: BlockLayout, family: str = "") -> BlockFactors:
        """The factors on ``layout``; a count that fits none of its forms is one error.

        A uniform preset (``ALL``, ``NONE``, ``ALL0.5``) on a layout none of whose forms has
        its 17 values (SDXL) applies to every block."""
        names = layout.lbw_names
        for form in layout.lbw_forms:
            if len(form) == len(self.values):
                by_name = dict(zip(form, self.values, strict=True))
                return BlockFactors(layout, by_name.pop("BASE", 1.0), by_name)
        if self.spec.upper() in BLOCK_WEIGHT_PRESETS and len(set(self.values)) == 1:
            return BlockFactors(layout, self.values[0], dict.fromkeys(names[1:], self.values[0]))
        first, last = names[1], names[-1]
        short = f" or {len(layout.lbw_short)} (LoRA Block Weight's form)" if layout.lbw_short else ""
        where = f" for a {family} model" if family else ""
        raise BlockSpecError(
            f"{self.option} {self.spec!r}: got {len(self.values)} values; expected {len(names) - 1} "
            f"({first}..{last}), {len(names)} (BASE, {first}..{last}){short}{where}"
        )


def parse_block_multipliers(text: str, option: str = "--block_weights") -> BlockMultipliers:
    """A block-weight spec: a preset name (``OUTS``) or numbers, comma-separated or a JSON
    list; how many a layout takes is checked by :meth:`BlockMultipliers.factors`."""
    spec = text.strip()
    values_text = BLOCK_WEIGHT_PRESETS.get(spec.upper(), spec).strip().removeprefix("[").removesuffix("]")
    try:
        values = tuple(float(item) for item in values_text.split(","))
    except ValueError:
        presets = ", ".join(BLOCK_WEIGHT_PRESETS)
        raise BlockSpecError(
            f"{option} {text!r}: expected a preset ({presets}) or comma-separated numbers, one per block"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise BlockSpecError(f"{option} {text!r}: every value must be a finite number")
    return BlockMultipliers(values, spec, option)


def module_ratio(ratio: float, factors: BlockFactors | None, name: str) -> float:
    """An adapter's ratio for one module (by kohya name) after its block multipliers."""
    return ratio if factors is None else ratio * factors.for_module(name)


def block_multipliers_per_file(
    specs: Sequence[str], count: int, option: str = "--block_weights"
) -> list[BlockMultipliers | None]:
    """One spec for every file, or one per file (``none`` leaves a file unweighted)."""
    if not specs:
        return [None] * count
    if len(specs) not in (1, count):
        raise BlockSpecError(f"{option}: got {len(specs)} specs for {count} files; give one, or one per file")
    parsed = [None if s.strip().lower() == "none" else parse_block_multipliers(s, option) for s in specs]
    return parsed * count if len(parsed) == 1 else parsed
