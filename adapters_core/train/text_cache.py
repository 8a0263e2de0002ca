"""``--cache_text_encoder_outputs`` / ``--cache_text_encoder_outputs_to_disk``: encode each
distinct caption once, before training, when the text encoder does not train.

The cache maps a processed caption (prefix, suffix, keep-tokens separators already applied) to
whatever the model's caption encoding returns (:data:`adapters_core.family.TextOutputs`, named tensors: one
hidden state for SD 1.x/2.x, more for a family with several encoders). Steps then look the
outputs up instead of running the encoder, and the encoder's weights can leave memory.

Options that make a caption differ from step to step cannot be cached; as in kohya they are
refused with one error: caption shuffling, caption dropout, tag dropout and token warm-up, plus
wildcards (a random choice per step). ``caption_dropout_every_n_epochs`` is fine: its empty
caption is cached too.

With ``to_disk`` each image's outputs live in kohya's ``<stem>_te_outputs.npz`` next to it and
are reused by later runs. Besides the tensors the file stores the caption and a fingerprint of
the encoding (text-encoder weights, ``--clip_skip``, ``--max_token_length``,
``--mixed_precision``); a file whose caption or fingerprint differs is stale, re-encoded and
rewritten. Tensors keep the encoder's dtype (bfloat16, which npz cannot hold, goes through
float32 exactly), so cached training matches uncached training bit for bit at batch size 1
(with larger batches the encoder's batched arithmetic may round the last bits differently).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError
from adapters_core.family import TextOutputs
from adapters_core.train.dataset import DatasetGroupConfig, ImageDataset, process_caption

log = logging.getLogger(__name__)

TE_OUTPUTS_SUFFIX = "_te_outputs.npz"  # kohya's name for text-encoder output caches
_KEY_INFO = "adapt_te_cache"  # json: caption, fingerprint, dtype per tensor

EncodeCaptions = Callable[[list[str]], TextOutputs]


def check_cacheable(config: DatasetGroupConfig) -> None:
    """Refuse subsets whose captions change from step to step (they would be cached once)."""
    for number, dataset in enumerate(config.datasets, start=1):
        for s in dataset.subsets:
            changing = [
                name
                for name, on in (
                    ("shuffle_caption", s.shuffle_caption),
                    ("caption_dropout_rate", s.caption_dropout_rate > 0),
                    ("caption_tag_dropout_rate", s.caption_tag_dropout_rate > 0),
                    ("token_warmup_step", s.token_warmup_step > 0),
                    ("enable_wildcard", s.enable_wildcard),
                )
                if on
            ]
            if changing:
                where = f"dataset {number}" + (f" of {config.source}" if config.source else "")
                raise ConfigError(
                    f"{where}: --cache_text_encoder_outputs cannot be used with {', '.join(changing)} "
                    f"(set on subset {s.image_dir or s.metadata_file}): they change the caption every step; "
                    "disable them or do not cache text-encoder outputs"
                )


def fixed_captions(dataset: ImageDataset) -> dict[Path, str]:
    """Each image's caption as every step will see it (the dataset must pass :func:`check_cacheable`)."""
    rng = random.Random(0)  # unused: no random caption option is left
    return {
        record.path: process_caption(record.caption, record.subset, rng, 1, 0, dataset.max_train_steps)
        for record in dataset.records
    }


def encoder_fingerprint(text_encoders: Sequence[torch.nn.Module], **settings: object) -> str:
    """SHA-256 of the encoders' weights (names, dtypes, shapes, bytes) and the encoding settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text_encoder in text_encoders:
        for name, tensor in sorted(text_encoder.state_dict().items()):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def outputs_file_path(image_path: str | Path) -> Path:
    """kohya's cache name, beside the image."""
    path = Path(image_path)
    return path.with_name(path.stem + TE_OUTPUTS_SUFFIX)


def save_outputs_npz(path: str | Path, outputs: TextOutputs, caption: str, fingerprint: str) -> None:
    """Write one caption's outputs (tensors without the batch dimension) atomically."""
    dtypes = {name: str(value.dtype).removeprefix("torch.") for name, value in outputs.items()}
    arrays: dict[str, Any] = {
        name: (value.float() if value.dtype == torch.bfloat16 else value).detach().cpu().numpy()
        for name, value in outputs.items()
    }
    arrays[_KEY_INFO] = np.str_(json.dumps({"caption": caption, "fingerprint": fingerprint, "dtypes": dtypes}))
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_outputs_npz(path: str | Path, caption: str, fingerprint: str) -> TextOutputs | None:
    """The cached outputs, or None when the file is missing, unreadable or for another caption or encoding."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _KEY_INFO not in npz:
                return None
            info = json.loads(str(npz[_KEY_INFO]))
            if info.get("caption") != caption or info.get("fingerprint") != fingerprint:
                return None
            dtypes = info["dtypes"]
            return {name: torch.from_numpy(npz[name]).to(getattr(torch, dtype)) for name, dtype in dtypes.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError):
        return None


@dataclass
class TextCacheStats:
    loaded: int = 0
    encoded: int = 0


class TextEncoderCache:
    """Text-encoder outputs (on the CPU, without batch dimension) keyed by caption."""

    def __init__(self, to_disk: bool = False) -> None:
        self.to_disk = to_disk
        self.outputs: dict[str, TextOutputs] = {}

    def lookup(self, captions: list[str], device: torch.device) -> TextOutputs:
        """A batch of outputs, as the encoder would have returned it for these captions."""
        missing = [caption for caption in captions if caption not in self.outputs]
        if missing:
            raise KeyError(f"text-encoder outputs of caption {missing[0]!r} were not cached")
        names = self.outputs[captions[0]].keys()
        return {name: torch.stack([self.outputs[c][name] for c in captions]).to(device) for name in names}

    @torch.no_grad()
    def fill(
        self,
        dataset: ImageDataset,
        encode: EncodeCaptions,
        *,
        fingerprint: str,
        batch_size: int,
        write_files: bool,
        show_progress: bool = True,
    ) -> TextCacheStats:
        """Load valid cache files (with ``to_disk``), encode every other distinct caption, write files."""
        stats = TextCacheStats()
        captions = fixed_captions(dataset)
        stale: dict[Path, str] = {}
        for image, caption in captions.items() if self.to_disk else ():
            found = load_outputs_npz(outputs_file_path(image), caption, fingerprint)
            if found is None:
                stale[image] = caption
            else:
                self.outputs.setdefault(caption, found)
                stats.loaded += 1
        wanted = set(captions.values())
        if any(s.caption_dropout_every_n_epochs > 0 for ds in dataset.config.datasets for s in ds.subsets):
            wanted.add("")  # the caption of a dropped epoch
        ordered = sorted(wanted - self.outputs.keys())
        bar = tqdm(total=len(ordered), desc="caching text", unit="caption", disable=not show_progress or not ordered)
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            batch = encode(chunk)
            for index, caption in enumerate(chunk):
                self.outputs[caption] = {name: value[index].detach().cpu().clone() for name, value in batch.items()}
            bar.update(len(chunk))
        bar.close()
        stats.encoded = len(ordered)
        if self.to_disk and write_files:
            for image, caption in stale.items():
                save_outputs_npz(outputs_file_path(image), self.outputs[caption], caption, fingerprint)
        log.info("text-encoder outputs: %d from cache files, %d captions encoded", stats.loaded, stats.encoded)
        return stats
