"""SDXL's prompt encoding and the U-Net's extra conditioning, as kohya's SDXL training does.

A prompt encodes to both text encoders' penultimate hidden states (no final layer norm),
side by side (768 + 1280 = 2048 wide), and the second encoder's projected pooled embedding.
The U-Net also takes six size numbers per image (``time_ids``): the original image size
(height, width), the crop's top-left corner in the resized image, and the target (bucket)
size, each embedded by the U-Net like a timestep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from adapt_sdxl.family import HIDDEN_STATE, POOLED
from adapters_core.errors import ConfigError, ModelLoadError
from adapters_core.family import TextOutputs
from adapters_core.models import clip_text

ENCODERS = ("text_encoder", "text_encoder_2")
SIZE_KEYS = ("original_sizes", "crop_ltrb", "flipped", "bucket_reso")


def _penultimate(encoder: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    batch, chunks, window = ids.shape
    outputs = encoder(ids.reshape(batch * chunks, window).to(encoder.device), output_hidden_states=True)
    return clip_text.join_chunks(outputs.hidden_states[-2], batch, chunks, window), outputs


def encode_prompts(
    components: Mapping[str, nn.Module], tokenizers: Mapping[str, Any], prompts: list[str], max_token_length: int | None
) -> TextOutputs:
    """``hidden_state`` [B, L, 2048] and ``pooled`` [B, 1280]; with ``--max_token_length`` the
    pooled embedding is the first 75-token chunk's, as kohya takes it."""
    states = []
    pooled = None
    for name in ENCODERS:
        tokenizer = tokenizers.get(name)
        if tokenizer is None:
            raise ModelLoadError(f"the model was loaded without the {name} tokenizer; pass one (--tokenizer)")
        ids = clip_text.tokenize(tokenizer, prompts, max_token_length)
        hidden, outputs = _penultimate(components[name], ids)
        states.append(hidden)
        if name == "text_encoder_2":
            pooled = outputs.text_embeds.reshape(ids.shape[0], ids.shape[1], -1)[:, 0]
    assert pooled is not None
    return {HIDDEN_STATE: torch.cat(states, dim=-1), POOLED: pooled}


def size_conditioning(
    original_size: Sequence[int], crop_ltrb: Sequence[int], flipped: bool, bucket_reso: Sequence[int]
) -> list[int]:
    """kohya's six numbers for one image (sizes given as width, height): original (h, w), crop
    top-left (top, left), target (h, w); a flipped image's crop left counts from the other side."""
    width, height = int(bucket_reso[0]), int(bucket_reso[1])
    left = width - int(crop_ltrb[2]) if flipped else int(crop_ltrb[0])
    return [int(original_size[1]), int(original_size[0]), int(crop_ltrb[1]), left, height, width]


def time_ids(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's ``time_ids`` [B, 6] from its sizes, crops, flips and bucket."""
    missing = [key for key in SIZE_KEYS if key not in batch]
    if missing:
        raise ConfigError(f"an SDXL training batch needs {', '.join(SIZE_KEYS)}; it lacks {', '.join(missing)}")
    rows = [
        size_conditioning(original, crop, flipped, batch["bucket_reso"])
        for original, crop, flipped in zip(batch["original_sizes"], batch["crop_ltrb"], batch["flipped"])
    ]
    return torch.tensor(rows, dtype=torch.float32)


def unet_conditioning(outputs: TextOutputs, batch: Mapping[str, Any]) -> dict[str, Any]:
    hidden = outputs[HIDDEN_STATE]
    pooled = outputs[POOLED]
    ids = time_ids(batch).to(hidden.device, hidden.dtype)
    return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
