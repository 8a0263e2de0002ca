"""PNG output of ``adapt generate``: A1111-style ``parameters`` text, short hashes, atomic writes.

The ``parameters`` tEXt chunk reads like AUTOMATIC1111's, so its PNG Info tab, ComfyUI and
image sites recognise it::

    a cat <lora:style:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689,
    Model: v1-5, Lora hashes: "style: 0123456789ab", Version: adapt 0.1.0

(one line from ``Steps:`` on). Hashes follow A1111: the model hash is the first 10 hex digits
of the checkpoint's SHA-256; a LoRA's is the first 12 of its ``sshs_model_hash`` (the SHA-256
of a safetensors file's data after the header), computed when the file lacks it.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from adapters_core import __version__
from adapters_core.atomic import atomic_path
from adapters_core.formats import SAFETENSORS_SUFFIX, load_metadata

# adapt's sampler names -> the names A1111 writes
SAMPLER_LABELS = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmsolver++": "DPM++ 2M",
    "dpm": "DPM++ 2M",
    "lms": "LMS",
    "heun": "Heun",
    "ddpm": "DDPM",
}
PARAMETERS_KEY = "parameters"
_INDEX_RE = re.compile(r"^(\d{5})-")


@dataclass(frozen=True)
class NetworkInfo:
    """An adapter as the PNG names it: A1111 name (file stem), multiplier and short hash."""

    name: str
    multiplier: float
    short_hash: str


def _sha256(path: Path, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_short_hash(path: str | os.PathLike[str]) -> str | None:
    """A1111's model hash of a single-file checkpoint; ``None`` for a Diffusers folder."""
    file = Path(path)
    return _sha256(file)[:10] if file.is_file() else None


def adapter_short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's LoRA hash: ``sshs_model_hash`` (or the SHA-256 of the data after the safetensors
    header, which is what it hashes), first 12 hex digits; the file's SHA-256 for pickles. An
    adapter folder (diffusers, PEFT) gets the SHA-256 of its weight files' hashes."""
    file = Path(path)
    if file.is_dir():
        parts = "".join(_sha256(weights) for weights in sorted(file.rglob("*.safetensors")))
        return hashlib.sha256(parts.encode()).hexdigest()[:12]
    if file.suffix.lower() != SAFETENSORS_SUFFIX:
        return _sha256(file)[:12]
    stored = load_metadata(file).get("sshs_model_hash")
    if stored:
        return stored[:12]
    with file.open("rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
    return _sha256(file, 8 + header_length)[:12]


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    scale: float,
    seed: int,
    width: int,
    height: int,
    model_name: str,
    model_hash: str | None,
    networks: Sequence[NetworkInfo],
    clip_skip: int | None = None,
) -> str:
    """The ``parameters`` text of one image; ``<lora:name:mul>`` tags are appended to the prompt."""
    tags = " ".join(f"<lora:{n.name}:{_number(n.multiplier)}>" for n in networks)
    lines = [f"{prompt} {tags}".strip()]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    fields = [
        f"Steps: {steps}",
        f"Sampler: {SAMPLER_LABELS.get(sampler, sampler)}",
        f"CFG scale: {_number(scale)}",
        f"Seed: {seed}",
        f"Size: {width}x{height}",
    ]
    if model_hash:
        fields.append(f"Model hash: {model_hash}")
    fields.append(f"Model: {model_name}")
    if clip_skip is not None and clip_skip > 1:
        fields.append(f"Clip skip: {clip_skip}")
    if networks:
        hashes = ", ".join(f"{n.name}: {n.short_hash}" for n in networks)
        fields.append(f'Lora hashes: "{hashes}"')
    fields.append(f"Version: adapt {__version__}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def next_image_index(outdir: Path) -> int:
    """One past the highest ``NNNNN-`` prefix in ``outdir``, so earlier images are never replaced."""
    if not outdir.is_dir():
        return 0
    indices = [int(m.group(1)) for p in outdir.iterdir() if (m := _INDEX_RE.match(p.name))]
    return max(indices, default=-1) + 1


def save_png(image: Image.Image, path: Path, parameters: str) -> Path:
    """Write ``image`` with its ``parameters`` text chunk, atomically; an existing file is refused."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path
