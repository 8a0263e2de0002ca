"""A tiny synthetic DreamBooth dataset, for demos and end-to-end tests without downloads.

The concept is deliberately easy for a small model to pick up: one flat shape (circle or square)
in one of four saturated colours on a light background, with small jitter in position, size and
background tint so that images differ. Captions name the shape and colour after the trigger.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASS_FOLDER = "10_sks shape"
_COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (235, 200, 30)}
_SHAPES = ("circle", "square")


def write_demo_dataset(folder: str | Path, n_images: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write ``<folder>/img/10_sks shape/NNN.png`` with ``.txt`` captions; return ``<folder>/img``.

    Use the returned folder as ``--train_data_dir`` with ``--caption_extension .txt`` (kohya's
    default extension is ``.caption``; without it the folder's class tokens "sks shape" are used).
    The same arguments always produce byte-identical files.
    """
    if n_images < 1 or size < 8:
        raise ValueError(f"write_demo_dataset: need n_images >= 1 and size >= 8, got {n_images}, {size}")
    rng = random.Random(seed)
    train_dir = Path(folder) / "img"
    target = train_dir / CLASS_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    colour_names = list(_COLOURS)
    for i in range(n_images):
        shape = _SHAPES[i % len(_SHAPES)]
        colour = colour_names[(i // len(_SHAPES)) % len(colour_names)]
        tint = rng.randint(-12, 12)
        image = Image.new("RGB", (size, size), (230 + tint // 2, 228 + tint // 2, 222 + tint // 2))
        half = size * rng.uniform(0.22, 0.3)
        cx = size / 2 + rng.uniform(-0.1, 0.1) * size
        cy = size / 2 + rng.uniform(-0.1, 0.1) * size
        box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=_COLOURS[colour])
        image.save(target / f"{i:03d}.png")
        (target / f"{i:03d}.txt").write_text(f"sks shape, {colour} {shape}\n", encoding="utf-8")
    return train_dir


__all__ = ["write_demo_dataset", "CLASS_FOLDER"]
