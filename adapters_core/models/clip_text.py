"""Captions to text-encoder conditioning, as kohya does for SD 1.x/2.x.

``--max_token_length`` 150/225 splits a caption into chunks of 75 tokens, each wrapped in its
own BOS ... EOS and encoded separately; the chunk outputs are joined back into one sequence
(first BOS, every chunk's 75 inner states, last token) of 152 or 227 states. ``--clip_skip k``
takes the k-th last hidden state and applies the final layer norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPTokenizer

from adapters_core.errors import ConfigError

ALLOWED_MAX_TOKEN_LENGTHS = (None, 75, 150, 225)

TextOutputs = dict[str, torch.Tensor]
"""What encoding a batch of captions gives: named tensors, batch first. SD 1.x/2.x give one,
:data:`HIDDEN_STATE`; a family with more encoders adds its own names (the text cache stores
whatever is returned)."""
HIDDEN_STATE = "hidden_state"


def tokenize(tokenizer: CLIPTokenizer, captions: list[str], max_token_length: int | None = None) -> torch.Tensor:
    """Token ids [B, chunks, 77] (one chunk without ``max_token_length``)."""
    if max_token_length not in ALLOWED_MAX_TOKEN_LENGTHS:
        raise ConfigError(f"--max_token_length {max_token_length}: expected 75, 150 or 225")
    window = tokenizer.model_max_length  # 77 = BOS + 75 + EOS
    length = (max_token_length or window - 2) + 2
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=length, return_tensors="pt").input_ids
    if length <= window:
        return ids.unsqueeze(1)
    return torch.stack([_chunks(tokenizer, row, length, window) for row in ids])


def _chunks(tokenizer: CLIPTokenizer, ids: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """One long id row -> [chunks, window]: BOS + 75 ids + last id, per chunk.

    When padding differs from EOS (the SD 2.x tokenizer), a chunk that ends mid-text gets EOS
    as its last token and a chunk that starts with padding gets EOS first, as kohya does.
    """
    inner = window - 2
    rows = []
    for start in range(1, length - window + 2, inner):
        chunk = torch.cat([ids[:1], ids[start : start + inner], ids[-1:]])
        if tokenizer.pad_token_id != tokenizer.eos_token_id:
            if chunk[-2] not in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                chunk[-1] = tokenizer.eos_token_id
            if chunk[1] == tokenizer.pad_token_id:
                chunk[1] = tokenizer.eos_token_id
        rows.append(chunk)
    return torch.stack(rows)


def check_clip_skip(text_encoder: nn.Module, clip_skip: int | None) -> None:
    """``--clip_skip`` must name one of the encoder's layers (checked before any work)."""
    config: Any = text_encoder.config  # transformers' config of this encoder class
    layers = int(config.num_hidden_layers)
    if clip_skip is not None and not 1 <= clip_skip <= layers:
        raise ConfigError(f"--clip_skip {clip_skip}: expected 1 to {layers} (the text encoder's layers)")


def final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    """The CLIP final layer norm (transformers 5 dropped the ``text_model`` level)."""
    model: Any = getattr(text_encoder, "text_model", text_encoder)
    return model.final_layer_norm


def encode(text_encoder: nn.Module, input_ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
    """Conditioning [B, L, D] from ids [B, chunks, 77]; L = 77, or 2 + 75 * chunks for long captions."""
    batch, chunks, window = input_ids.shape
    device: Any = text_encoder.device  # transformers' PreTrainedModel.device
    flat = input_ids.reshape(batch * chunks, window).to(device)
    if clip_skip is None:
        states = text_encoder(flat)[0]
    else:
        outputs = text_encoder(flat, output_hidden_states=True, return_dict=True)
        states = final_layer_norm(text_encoder)(outputs.hidden_states[-clip_skip])
    return join_chunks(states, batch, chunks, window)


def join_chunks(states: torch.Tensor, batch: int, chunks: int, window: int) -> torch.Tensor:
    """States [B * chunks, 77, D] of chunked captions -> [B, L, D] (first BOS, every chunk's
    inner states, last token)."""
    states = states.reshape(batch, chunks * window, states.shape[-1])
    if chunks == 1:
        return states
    parts = [states[:, :1]]
    for start in range(1, chunks * window, window):
        parts.append(states[:, start : start + window - 2])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def encode_captions(
    tokenizer: CLIPTokenizer,
    text_encoder: nn.Module,
    captions: list[str],
    *,
    max_token_length: int | None = None,
    clip_skip: int | None = None,
) -> TextOutputs:
    """The conditioning of a batch of captions, as :data:`TextOutputs`."""
    ids = tokenize(tokenizer, captions, max_token_length)
    return {HIDDEN_STATE: encode(text_encoder, ids, clip_skip)}
