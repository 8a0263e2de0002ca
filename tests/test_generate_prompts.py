"""Prompt lines with kohya's per-line options, A1111 PNG parameters and hashes (no model needed)."""

from __future__ import annotations

import hashlib
import logging

import pytest
import safetensors.torch
import torch
from PIL import Image

from adapters_core.errors import ConfigError, OutputExistsError
from adapters_core.formats import load_metadata, save_adapter
from adapters_core.generate.png import (
    NetworkInfo,
    a1111_parameters,
    adapter_short_hash,
    model_short_hash,
    next_image_index,
    save_png,
)
from adapters_core.generate.prompts import PromptJob, parse_prompt_line, read_prompts_file

BASE = PromptJob(prompt="", negative_prompt="lowres", width=512, height=512, steps=20, scale=7.0)


def test_every_per_line_option_overrides_the_command_line_values():
    job = parse_prompt_line("a cat, sitting --n blurry, ugly --w 640 --h 768 --s 12 --l 4.5 --d 3,9 --am 0.8,-0.5", BASE)
    assert job == PromptJob("a cat, sitting", "blurry, ugly", 640, 768, 12, 4.5, (3, 9), (0.8, -0.5))


def test_options_left_out_keep_the_command_line_values():
    job = parse_prompt_line("  a dog --d 7  ", BASE)
    assert (job.prompt, job.negative_prompt, job.width, job.height, job.steps, job.scale) == (
        "a dog", "lowres", 512, 512, 20, 7.0
    )
    assert job.seeds == (7,) and job.multipliers is None


def test_unknown_gen_img_options_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        job = parse_prompt_line("a cat --nl 3 --s 5", BASE, "p.txt:4")
    assert job.steps == 5
    assert "p.txt:4: option --nl is not supported" in caplog.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a cat --w wide", "p:1: --w 'wide': expected an integer"),
        ("a cat --l x", "p:1: --l 'x': expected a number"),
        ("a cat --am 1,y", "p:1: --am 'y': expected a number"),
        ("a cat --w", "p:1: ' --w' is not of the form"),
        (" --n only negative", "p:1: the line has options but no prompt"),
    ],
)
def test_bad_lines_name_the_line_and_the_option(line, message):
    with pytest.raises(ConfigError, match=message):
        parse_prompt_line(line, BASE, "p:1")


def test_prompts_file_skips_comments_and_empty_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n\na cat --s 3\n   # indented comment\na dog --n bad\n", encoding="utf-8")
    jobs = read_prompts_file(path, BASE)
    assert [(j.prompt, j.steps, j.negative_prompt) for j in jobs] == [("a cat", 3, "lowres"), ("a dog", 20, "bad")]


def test_prompts_file_errors_name_the_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("ok\na cat --s many\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"prompts.txt:2: --s 'many'"):
        read_prompts_file(path, BASE)
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no prompts"):
        read_prompts_file(path, BASE)
    with pytest.raises(ConfigError, match="cannot read"):
        read_prompts_file(tmp_path / "missing.txt", BASE)


def test_a1111_parameters_text():
    text = a1111_parameters(
        prompt="a cat", negative_prompt="blurry", steps=20, sampler="euler_a", scale=7.0, seed=42, width=512,
        height=768, model_name="v1-5", model_hash="0123456789", clip_skip=2,
        networks=[NetworkInfo("style", 0.8, "aaaaaaaaaaaa"), NetworkInfo("face", 1.0, "bbbbbbbbbbbb")],
    )
    assert text.splitlines() == [
        "a cat <lora:style:0.8> <lora:face:1>",
        "Negative prompt: blurry",
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 0123456789, "
        'Model: v1-5, Clip skip: 2, Lora hashes: "style: aaaaaaaaaaaa, face: bbbbbbbbbbbb", Version: adapt 0.1.0',
    ]


def test_a1111_parameters_without_negative_networks_or_hash():
    text = a1111_parameters(
        prompt="a cat", negative_prompt="", steps=2, sampler="dpmsolver++", scale=7.5, seed=1, width=32, height=32,
        model_name="tiny", model_hash=None, networks=[],
    )
    assert text == "a cat\nSteps: 2, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 1, Size: 32x32, Model: tiny, Version: adapt 0.1.0"


def test_hashes_follow_a1111(tmp_path):
    tensors = {"lora_unet_x.lora_down.weight": torch.ones(2, 3), "lora_unet_x.lora_up.weight": torch.zeros(3, 2)}
    with_hash = save_adapter(tmp_path / "a.safetensors", tensors)
    assert adapter_short_hash(with_hash) == load_metadata(with_hash)["sshs_model_hash"][:12]
    plain = tmp_path / "b.safetensors"
    safetensors.torch.save_file(tensors, str(plain))
    data = plain.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert adapter_short_hash(plain) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert model_short_hash(plain) == hashlib.sha256(data).hexdigest()[:10]
    assert model_short_hash(tmp_path) is None


def test_png_carries_parameters_and_is_never_overwritten(tmp_path):
    assert next_image_index(tmp_path / "missing") == 0
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    path = save_png(image, tmp_path / "00003-7.png", "a cat\nSteps: 2")
    (tmp_path / "notes.txt").write_text("x")
    assert Image.open(path).text["parameters"] == "a cat\nSteps: 2"
    assert next_image_index(tmp_path) == 4
    with pytest.raises(OutputExistsError):
        save_png(image, path, "other")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
