"""SDXL's prompt encoding and the U-Net's extra conditioning, as kohya's SDXL training does.

A prompt encodes to both text encoders' penultimate hidden states (no final layer norm),
side by side (768 + 1280 = 2048 wide), and the second encoder's projected pooled embedding.
The U-Net also takes six size numbers per image (``time_ids``): the original image size
(height, width), Stability's crop top-left (the margins of the image fitted inside the
bucket, kohya's ``get_crop_ltrb``) and the target (bucket) size, each embedded by the U-Net
like a timestep.
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
SIZE_KEYS = ("original_sizes", "flipped", "bucket_reso")


def _penultimate(encoder: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    batch, chunks, window = ids.shape
    device = next(encoder.parameters()).device
    outputs = encoder(ids.reshape(batch * chunks, window).to(device), output_hidden_states=True)
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


def crop_ltrb(bucket_reso: Sequence[int], image_size: Sequence[int]) -> tuple[float, float, float, float]:
    """Stability's crop numbers as kohya computes them for SDXL (not the crop actually made):
    the image scaled to fit inside the bucket, centred; left/top are the margins, right/bottom
    the far edges (right serves flipped images). Sizes are (width, height)."""
    bucket_w, bucket_h = bucket_reso[0], bucket_reso[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_w / bucket_h > image_ar:  # the bucket is wider: fit the height
        width, height = bucket_h * image_ar, float(bucket_h)
    else:
        width, height = float(bucket_w), bucket_w / image_ar
    left, top = (bucket_w - width) // 2, (bucket_h - height) // 2
    return left, top, left + width, top + height


def size_conditioning(original_size: Sequence[int], flipped: bool, bucket_reso: Sequence[int]) -> list[int]:
    """kohya's six numbers for one image (sizes given as width, height): original (h, w), crop
    top-left (top, left), target = bucket (h, w); a flipped image's left is the bucket width
    minus the right edge."""
    left, top, right, _ = crop_ltrb(bucket_reso, original_size)
    width, height = int(bucket_reso[0]), int(bucket_reso[1])
    left = width - right if flipped else left
    return [int(original_size[1]), int(original_size[0]), int(top), int(left), height, width]


def time_ids(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's ``time_ids`` [B, 6] from its images' original sizes, flips and bucket."""
    missing = [key for key in SIZE_KEYS if key not in batch]
    if missing:
        raise ConfigError(f"an SDXL training batch needs {', '.join(SIZE_KEYS)}; it lacks {', '.join(missing)}")
    rows = [
        size_conditioning(original, flipped, batch["bucket_reso"])
        for original, flipped in zip(batch["original_sizes"], batch["flipped"])
    ]
    return torch.tensor(rows, dtype=torch.float32)


def unet_conditioning(outputs: TextOutputs, batch: Mapping[str, Any]) -> dict[str, Any]:
    hidden = outputs[HIDDEN_STATE]
    pooled = outputs[POOLED]
    ids = time_ids(batch).to(hidden.device, hidden.dtype)
    return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
