"""SDXL's U-Net block layout as kohya's ``networks/lora.py`` defines it for SDXL.

23 blocks, named after the LDM layout: 0 the time and size embeddings (``time_embed``,
``label_emb``), 1..9 ``input_blocks_0..8``, 10..12 ``middle_block_0..2``, 13..21
``output_blocks_0..8``, 22 ``out``. Block-wise ranks list all 23; lr weights are given for
the 9 down, 3 mid and 9 up blocks (the first and last keep 1). Block weights at apply time
(``--block_weights``) use LoRA Block Weight's SDXL names: IN00..IN08, M00 (the whole middle
block), OUT00..OUT08 (20 values with BASE), or its 12-value form.
"""

from __future__ import annotations

from adapters_core.blocks import BlockLayout

SDXL_LEVEL_BLOCKS = 9
SDXL_MID_BLOCKS = 3
_FIRST = {"input_blocks_": 1, "middle_block_": 1 + SDXL_LEVEL_BLOCKS,
          "output_blocks_": 1 + SDXL_LEVEL_BLOCKS + SDXL_MID_BLOCKS}
OUT_BLOCK = 1 + 2 * SDXL_LEVEL_BLOCKS + SDXL_MID_BLOCKS  # 22
# LoRA Block Weight's 12-value SDXL form: BASE and the blocks a LierLa LoRA adapts.
LBW12_NAMES = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6)))


def sdxl_block_index(name: str) -> int:
    """Block index (0..22) of a kohya SDXL U-Net module name (LDM style), -1 for other names."""
    if not name.startswith("lora_unet_"):
        return -1
    rest = name[len("lora_unet_") :]
    if rest.startswith(("time_embed_", "label_emb_")):
        return 0
    if rest.startswith("out_"):
        return OUT_BLOCK
    for part, first in _FIRST.items():
        if rest.startswith(part):
            number = rest[len(part) :].split("_", 1)[0]
            return first + int(number) if number.isdigit() else -1
    return -1


SDXL_BLOCKS = BlockLayout(
    SDXL_LEVEL_BLOCKS, SDXL_MID_BLOCKS, SDXL_LEVEL_BLOCKS, sdxl_block_index, before=1, after=1, lbw_short=LBW12_NAMES
)
