"""The bundled configs build the real model classes; real-size modules on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adapters_core.models import build_sd15_text_encoder, build_sd15_unet
from adapters_core.models.bundled import TINY_TOKENIZER_DIR, ConfigName, config_dir, load_config
from adapters_core.models.tiny import build_sd2_text_encoder, build_sd2_unet


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["sd_v1", "sd_v2", "sd_v2_v", "tiny"])
def test_bundled_configs_build_the_classes(name: ConfigName) -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_config(name, "unet"))
        vae = AutoencoderKL.from_config(load_config(name, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**load_config(name, "text_encoder")))
    scheduler = DDPMScheduler.from_config(load_config(name, "scheduler"))
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    assert DDIMScheduler.from_pretrained(config_dir(name), subfolder="scheduler").config.beta_end == 0.012
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    assert vae.config.latent_channels == unet.config.in_channels == 4
    expected = {"sd_v1": "epsilon", "sd_v2": "epsilon", "sd_v2_v": "v_prediction", "tiny": "epsilon"}[name]
    assert scheduler.config.prediction_type == expected


def test_real_size_modules_on_meta() -> None:
    unet = build_sd15_unet()
    assert next(unet.parameters()).device.type == "meta"
    assert _count(unet) == 859_520_964
    assert _count(build_sd15_text_encoder()) == 123_060_480
    assert _count(build_sd2_unet(dtype=torch.float16)) == 865_910_724
    assert build_sd2_unet(v_parameterization=True).config["sample_size"] == 96
    te2 = build_sd2_text_encoder()
    assert len(te2.encoder.layers) == 23
    assert te2.config.hidden_act == "gelu" and te2.config.hidden_size == 1024


def test_tiny_tokenizer_handles_real_prompts() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR, local_files_only=True)
    vocab = json.loads((TINY_TOKENIZER_DIR / "vocab.json").read_text())
    assert sorted(vocab.values()) == list(range(load_config("tiny", "text_encoder")["vocab_size"]))
    assert len(tokenizer) == len(vocab) and tokenizer.model_max_length == 77
    for prompt in ["a photo of sks dog", "The Cat, 2 dogs & a {hat}!", "ünïcödé"]:
        ids = tokenizer(prompt, padding="max_length", max_length=77).input_ids
        assert len(ids) == 77 and ids[0] == 0 and max(ids) < len(vocab)
    ids = tokenizer("a photo of sks dog").input_ids
    assert ids[-1] == 1 and 1 not in ids[1:-1]  # no unknown (= end-of-text) tokens inside
    assert tokenizer("the").input_ids == [0, vocab["the</w>"], 1]
