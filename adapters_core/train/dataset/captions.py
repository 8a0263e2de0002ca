"""Captions: reading caption files and fine-tuning metadata, and kohya's per-step processing.

``process_caption`` is pure: all randomness comes from the ``random.Random`` passed in, and the
epoch/step are arguments, so the same inputs always give the same caption.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from adapters_core.errors import DatasetError
from adapters_core.textfiles import read_text
from adapters_core.train.dataset.config import SubsetConfig
from adapters_core.train.dataset.images import IMAGE_EXTENSIONS


def _read_text(path: Path) -> str:
    return read_text(path, str(path), DatasetError)


def read_caption_file(image_path: Path, caption_extension: str, enable_wildcard: bool) -> Optional[str]:
    """The caption of an image: ``<stem><ext>``, else the stem without kohya's face-crop suffix.

    Only the first line is used, unless wildcards are on: then every non-empty line is kept and
    one is chosen per step. None when there is no caption file.
    """
    stem = image_path.with_suffix("")
    candidates = [Path(f"{stem}{caption_extension}")]
    tokens = image_path.stem.split("_")
    if len(tokens) >= 5:  # "<name>_<cx>_<cy>_<w>_<h>" files share the caption of "<name>"
        candidates.append(image_path.with_name("_".join(tokens[:-4]) + caption_extension))
    for path in candidates:
        if path.is_file():
            lines = _read_text(path).splitlines()
            if not lines:
                raise DatasetError(f"{path}: caption file is empty; write a caption or delete the file")
            if enable_wildcard:
                return "\n".join(line.strip() for line in lines if line.strip())
            return lines[0].strip()
    return None


@dataclass(frozen=True)
class FinetuneEntry:
    """One image of a fine-tuning metadata file."""

    path: Path
    caption: str
    tags: Optional[str]


def _metadata_items(metadata_file: Path) -> dict[str, dict]:
    """JSON ``{key: {caption, tags, image_size}}`` or JSONL lines with an ``image_path``."""
    text = _read_text(metadata_file)
    if metadata_file.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{metadata_file}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DatasetError(f"{metadata_file}: expected a JSON object {{image: {{caption, tags}}}}")
        return data
    items: dict[str, dict] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{metadata_file}: line {n} is not valid JSON ({e.msg})") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str):
            raise DatasetError(f"{metadata_file}: line {n} needs an \"image_path\" string")
        items[entry["image_path"]] = entry
    return items


def _find_image(key: str, image_dir: Optional[Path], metadata_file: Path) -> Path:
    """Absolute keys are used as they are; relative ones (with or without extension) in image_dir."""
    path = Path(key)
    if not path.is_absolute():
        if image_dir is None:
            raise DatasetError(f"{metadata_file}: image '{key}' is a relative path; set image_dir on the subset")
        path = image_dir / key
    if path.is_file():
        return path.resolve()
    for ext in IMAGE_EXTENSIONS:
        for candidate in (Path(f"{path}{ext}"), Path(f"{path}{ext.upper()}")):
            if candidate.is_file():
                return candidate.resolve()
    raise DatasetError(f"{metadata_file}: image '{key}' not found (looked for {path})")


def load_finetune_metadata(metadata_file: Path, image_dir: Optional[Path], separator: str,
                           enable_wildcard: bool) -> list[FinetuneEntry]:
    """Read a metadata file; the caption is ``caption + separator + tags`` as in kohya."""
    if not metadata_file.is_file():
        raise DatasetError(f"{metadata_file}: metadata_file not found")
    entries = []
    for key, item in _metadata_items(metadata_file).items():
        caption = item.get("caption") or ""
        tags = item.get("tags") or None
        if not isinstance(caption, str) or not (tags is None or isinstance(tags, str)):
            raise DatasetError(f"{metadata_file}: '{key}': caption and tags must be strings")
        if tags is not None and enable_wildcard:
            tags = tags.replace("\n", separator)
            caption = "\n".join(f"{line}{separator}{tags}" for line in caption.split("\n") if line.strip())
        elif tags is not None:
            caption = f"{caption}{separator}{tags}" if caption else tags
        entries.append(FinetuneEntry(_find_image(key, image_dir, metadata_file), caption, tags))
    if not entries:
        raise DatasetError(f"{metadata_file}: no image entries")
    return entries


def count_tags(captions: Iterable[str], into: Optional[dict[str, int]] = None) -> dict[str, int]:
    """kohya's tag frequency: comma-split, stripped, lower-cased, empty tags ignored."""
    counts = {} if into is None else into
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def _expand_wildcards(caption: str, rng: random.Random) -> str:
    """Pick one line, then replace each ``{a|b|c}`` by one choice; ``{{`` and ``}}`` are literal braces."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "\u2985", "\u2986"
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def _split_tokens(caption: str, s: SubsetConfig) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, shufflable tokens, fixed tail): by keep_tokens_separator if present, else keep_tokens."""
    def split(text: str) -> list[str]:
        return [t.strip() for t in text.split(s.caption_separator) if t.strip()]

    sep = s.keep_tokens_separator
    if sep and sep in caption:
        head, flex = caption.split(sep, 1)
        tail = ""
        if sep in flex:
            flex, tail = flex.split(sep, 1)
        return split(head), split(flex), split(tail)
    tokens = split(caption)
    return tokens[: s.keep_tokens], tokens[s.keep_tokens:], []


def warmup_steps(s: SubsetConfig, max_train_steps: int) -> int:
    """token_warmup_step below 1 is a fraction of the whole run, as in kohya."""
    step = s.token_warmup_step
    return math.floor(step * max_train_steps) if step < 1 else int(step)


def process_caption(caption: str, s: SubsetConfig, rng: random.Random, epoch: int = 1, step: int = 0,
                    max_train_steps: int = 0) -> str:
    """kohya's order: prefix/suffix → dropout → wildcard → keep_tokens head → warmup → shuffle →
    tag dropout → join with ", " → secondary separator.

    ``epoch`` is 1-based as in kohya's loop (``caption_dropout_every_n_epochs`` drops on epochs
    n, 2n, ...). Tokens are only re-joined when shuffling, warmup, tag dropout or a
    keep_tokens_separator applies; otherwise the caption is passed on as written.
    """
    if s.caption_prefix:
        caption = f"{s.caption_prefix} {caption}"
    if s.caption_suffix:
        caption = f"{caption} {s.caption_suffix}"
    dropped = s.caption_dropout_rate > 0 and rng.random() < s.caption_dropout_rate
    if dropped or (s.caption_dropout_every_n_epochs > 0 and epoch % s.caption_dropout_every_n_epochs == 0):
        return ""
    caption = _expand_wildcards(caption, rng) if s.enable_wildcard else caption.split("\n")[0]
    warmup = warmup_steps(s, max_train_steps)
    has_separator = bool(s.keep_tokens_separator) and s.keep_tokens_separator in caption
    if s.shuffle_caption or warmup > 0 or s.caption_tag_dropout_rate > 0 or has_separator:
        head, flex, tail = _split_tokens(caption, s)
        if warmup > 0 and step < warmup:
            flex = flex[: math.floor(step * (len(flex) - s.token_warmup_min) / warmup) + s.token_warmup_min]
        if s.shuffle_caption:
            rng.shuffle(flex)
        if s.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= s.caption_tag_dropout_rate]
        caption = ", ".join(head + flex + tail)
    if s.secondary_separator:
        caption = caption.replace(s.secondary_separator, s.caption_separator)
    return caption


__all__ = ["read_caption_file", "FinetuneEntry", "load_finetune_metadata", "count_tags", "process_caption",
           "warmup_steps"]
