"""Labelled image grids drawn with Pillow: a title, column labels, row labels and sub-grids.

A :class:`GridLayout` knows where every cell goes before the first image exists, so the
canvas is allocated once and each image is pasted as it is made and then dropped: memory
holds the canvas (3 bytes a pixel of the result), never the images. Small images (the tiny
model's 32 px) are scaled up by a whole factor so the labels fit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

MIN_CELL_SIDE = 160  # smaller images are scaled up by a whole factor until they reach this
PAD = 8
GAP = 4  # white space between cells
BACKGROUND = "white"
INK = "black"


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (no font file needed)."""
    return ImageFont.load_default(size=size)


def wrap(text: str, width: int, size: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels: after spaces, ``-``, ``_`` or
    ``/`` where possible, inside a word only when it is wider than a line."""
    face = font(size)
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for token in re.split(r"(?<=[ \-_/])", paragraph):
            if face.getlength((line + token).rstrip()) <= width:
                line += token
                continue
            if line.strip():
                lines.append(line.rstrip())
            while face.getlength(token.rstrip()) > width and len(token) > 1:
                cut = next((i for i in range(len(token) - 1, 0, -1) if face.getlength(token[:i]) <= width), 1)
                lines.append(token[:cut])
                token = token[cut:]
            line = token
        lines.append(line.rstrip())
    return lines


def display_scale(width: int, height: int) -> int:
    """The whole factor that brings an image's shorter side to at least ``MIN_CELL_SIDE``."""
    return max(1, -(-MIN_CELL_SIDE // max(1, min(width, height))))


@dataclass(frozen=True)
class GridLayout:
    """Positions of a grid of ``len(columns) x len(rows)`` cells in each of ``len(groups)``
    sub-grids placed side by side, with a title on top."""

    title: str
    columns: Sequence[str]
    rows: Sequence[str]
    groups: Sequence[str]
    cell_width: int
    cell_height: int
    text_size: int = 16

    @property
    def line_height(self) -> int:
        return self.text_size + 4

    def _lines(self, text: str, width: int) -> int:
        return len(wrap(text, width, self.text_size)) if text else 0

    @property
    def group_label_height(self) -> int:
        lines = max((self._lines(g, self.group_width) for g in self.groups), default=0)
        return lines * self.line_height + (PAD if lines else 0)

    @property
    def column_label_height(self) -> int:
        lines = max((self._lines(c, self.cell_width) for c in self.columns), default=0)
        return lines * self.line_height + (PAD if lines else 0)

    @property
    def row_label_width(self) -> int:
        if not any(self.rows):
            return 0
        widest = max(font(self.text_size).getlength(line) for r in self.rows for line in wrap(r, 220, self.text_size))
        return int(widest) + 2 * PAD

    @property
    def group_width(self) -> int:
        return len(self.columns) * (self.cell_width + GAP) - GAP

    @property
    def header_height(self) -> int:
        return PAD + self.group_label_height + self.column_label_height

    @property
    def width(self) -> int:
        return self.row_label_width + len(self.groups) * (self.group_width + PAD) + PAD

    @property
    def height(self) -> int:
        return self._top() + self.header_height + len(self.rows) * (self.cell_height + GAP) - GAP + PAD

    def _title_width(self) -> int:
        return self.row_label_width + len(self.groups) * (self.group_width + PAD) - PAD

    def _top(self) -> int:
        """Where the sub-grid labels start: below the title (drawn 4 px larger)."""
        lines = len(wrap(self.title, self._title_width(), self.text_size + 4)) if self.title else 0
        return PAD + lines * (self.line_height + 4) + (PAD if self.title else 0)

    def cell_origin(self, column: int, row: int, group: int = 0) -> tuple[int, int]:
        """Top-left corner of a cell on the canvas."""
        x = self.row_label_width + PAD + group * (self.group_width + PAD) + column * (self.cell_width + GAP)
        y = self._top() + self.header_height + row * (self.cell_height + GAP)
        return x, y

    def canvas(self) -> Image.Image:
        """A white canvas with the title and every label drawn, the cells still empty."""
        image = Image.new("RGB", (self.width, self.height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        size = self.text_size
        y = PAD
        for line in wrap(self.title, self._title_width(), size + 4):
            draw.text((PAD, y), line, fill=INK, font=font(size + 4))
            y += self.line_height + 4
        for group, label in enumerate(self.groups):
            x, _ = self.cell_origin(0, 0, group)
            self._text_block(draw, label, x, self._top() + PAD, self.group_width, centered=True)
            for column, label_text in enumerate(self.columns):
                cx, _ = self.cell_origin(column, 0, group)
                self._text_block(
                    draw, label_text, cx, self._top() + PAD + self.group_label_height, self.cell_width, centered=True
                )
        for row, label in enumerate(self.rows):
            _, cy = self.cell_origin(0, row)
            lines = wrap(label, 220, size)
            top = cy + (self.cell_height - len(lines) * self.line_height) // 2
            self._text_block(draw, label, PAD, top, self.row_label_width - 2 * PAD, centered=False)
        return image

    def _text_block(self, draw: ImageDraw.ImageDraw, text: str, x: int, y: int, width: int, *, centered: bool) -> None:
        face = font(self.text_size)
        for line in wrap(text, width if centered else 220, self.text_size):
            offset = (width - face.getlength(line)) / 2 if centered else 0
            draw.text((x + offset, y), line, fill=INK, font=face)
            y += self.line_height

    def paste(self, canvas: Image.Image, image: Image.Image, column: int, row: int, group: int = 0) -> None:
        """Put one image into its cell, scaled to the cell size."""
        if image.size != (self.cell_width, self.cell_height):
            image = image.resize((self.cell_width, self.cell_height), Image.Resampling.NEAREST)
        canvas.paste(image, self.cell_origin(column, row, group))
