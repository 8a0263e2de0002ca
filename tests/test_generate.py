"""``adapt generate`` on the tiny model: reproducible pixels, multipliers, merge = patch, prompt files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import randomize
from PIL import Image

from adapt_cli.commands.generate import generate
from adapters_core.api import load_networks
from adapters_core.errors import ConfigError, FormatError
from adapters_core.formats import save_adapter
from adapters_core.generate.images import GenerationSettings
from adapters_core.generate.images import generate as generate_images
from adapters_core.generate.prompts import PromptJob
from adapters_core.models import build_tiny_model, load_sd_model, to_pipeline, write_tiny_model
from adapters_core.network import Network

COMMON = ["--W", "32", "--H", "32", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    write_tiny_model(root / "model", single_file=root / "tiny.safetensors")
    model = build_tiny_model()
    files = {}
    for seed, (network, options) in enumerate((("lora", {"network_dim": 4}), ("c3lier", {"network_dim": 2}))):
        net = Network.create(network, unet=model.unet, text_encoder=model.text_encoder, options=options)
        randomize(net, seed=seed, std=0.3)
        files[network] = root / f"{network}.safetensors"
        net.save(files[network])
    return SimpleNamespace(root=root, single=root / "tiny.safetensors", folder=root / "model", **files)


def run(*args: str | Path):
    return CliRunner().invoke(generate, [str(a) for a in args])


def ok(*args: str | Path) -> list[Path]:
    result = run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    outdir = Path(args[list(args).index("--outdir") + 1])
    return sorted(outdir.glob("*.png"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_same_seed_gives_identical_pixels_and_a1111_parameters(assets, tmp_path):
    args = ["--model", assets.single, "--network_weights", assets.lora, assets.c3lier, "--network_mul", "0.8", "0.5",
            "--prompt", "a cat --n ugly", "--images_per_prompt", "2", "--sampler", "euler_a", *COMMON]
    first = ok(*args, "--outdir", tmp_path / "a")
    second = ok(*args, "--outdir", tmp_path / "b")
    assert [p.name for p in first] == ["00000-3.png", "00001-4.png"]
    for a, b in zip(first, second):
        assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))  # seeds 3 and 4
    prompt, negative, fields = Image.open(first[1]).text["parameters"].splitlines()
    assert prompt == "a cat <lora:lora:0.8> <lora:c3lier:0.5>"
    assert negative == "Negative prompt: ugly"
    assert fields.startswith("Steps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 4, Size: 32x32, Model hash: ")
    assert 'Lora hashes: "lora: ' in fields and ", c3lier: " in fields
    # a second run into the same folder continues the numbering instead of replacing images
    assert [p.name for p in ok(*args, "--outdir", tmp_path / "a")][2:] == ["00002-3.png", "00003-4.png"]


def test_multipliers_change_the_image(assets, tmp_path):
    base = ["--model", assets.folder, "--prompt", "a cat", *COMMON]
    plain = ok(*base, "--outdir", tmp_path / "plain")[0]
    images = [ok(*base, "--network_weights", assets.lora, "--network_mul", mul, "--outdir", tmp_path / mul)[0]
              for mul in ("0.8", "-0.8")]
    assert not np.array_equal(pixels(plain), pixels(images[0]))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def _images(assets, merge: bool) -> np.ndarray:
    pipe = to_pipeline(load_sd_model(assets.single), "ddim")
    networks = load_networks(pipe, [assets.lora, assets.c3lier], [0.8, -0.5], merge=merge)
    jobs = [PromptJob("a cat", "blurry", 32, 32, 3, 7.5)]
    results = generate_images(pipe, jobs, GenerationSettings(seed=11, images_per_prompt=2), networks,
                              merged=merge, output_type="np")
    return np.stack([item.image for item in results])


def test_merged_networks_give_the_patched_images(assets, tmp_path):
    patched, merged = _images(assets, merge=False), _images(assets, merge=True)
    assert np.abs(patched - merged).max() < 1e-4
    args = ["--model", assets.single, "--network_weights", assets.lora, assets.c3lier, "--network_mul", "0.8", "-0.5",
            "--prompt", "a cat", *COMMON]
    via_patch = ok(*args, "--outdir", tmp_path / "patch")[0]
    via_merge = ok(*args, "--merge", "--outdir", tmp_path / "merge")[0]
    assert np.abs(pixels(via_patch) - pixels(via_merge)).max() <= 1  # PNG rounding only


def test_prompts_file_per_line_options(assets, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na cat --w 40 --h 32 --d 5,9 --am 0.5\n\na dog --s 1 --l 1 --n bad\n")
    files = ok("--model", assets.single, "--network_weights", assets.lora, "--from_file", prompts,
               "--images_per_prompt", "2", *COMMON, "--outdir", tmp_path / "out")
    assert [p.name for p in files] == ["00000-5.png", "00001-9.png", "00002-3.png", "00003-4.png"]
    assert Image.open(files[0]).size == (40, 32) and Image.open(files[2]).size == (32, 32)
    first = Image.open(files[0]).text["parameters"]
    assert first.startswith("a cat <lora:lora:0.5>\nSteps: 2,") and "Size: 40x32" in first
    dog = Image.open(files[3]).text["parameters"]
    assert "Negative prompt: bad\nSteps: 1, Sampler: DDIM, CFG scale: 1, Seed: 4" in dog
    # --am 0.5 on the line gives the image --network_mul 0.5 gives
    single = ok("--model", assets.single, "--network_weights", assets.lora, "--network_mul", "0.5",
                "--prompt", "a cat --w 40 --h 32 --d 5", *COMMON, "--outdir", tmp_path / "single")[0]
    assert np.array_equal(pixels(single), pixels(files[0]))


def test_clip_skip_and_long_prompts_run_and_change_the_image(assets, tmp_path):
    base = ["--model", assets.folder, "--prompt", "a cat", *COMMON]
    plain = ok(*base, "--outdir", tmp_path / "plain")[0]
    skipped = ok(*base, "--clip_skip", "2", "--max_token_length", "150", "--outdir", tmp_path / "skip")[0]
    assert not np.array_equal(pixels(plain), pixels(skipped))
    assert "Clip skip: 2" in Image.open(skipped).text["parameters"]


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["--network_mul", "0.5", "0.5"], ConfigError, "--network_mul: got 2 values for 1 --network_weights files"),
        (["--prompt", "a cat --am 0.5,0.5"], ConfigError, "--am gives 2 multipliers for 1 networks"),
        (["--prompt", "a cat --am 0.3", "--merge"], ConfigError, "--am cannot change multipliers of merged networks"),
        (["--prompt", "a cat --w 30"], ConfigError, "size 30x32: both sides must be positive multiples of 8"),
        (["--clip_skip", "5"], ConfigError, "--clip_skip 5: expected 1 to 2"),
    ],
)
def test_user_errors_are_one_clear_line(assets, tmp_path, extra, error, message):
    args = ["--model", assets.single, "--network_weights", assets.lora, *COMMON, "--outdir", tmp_path]
    if "--prompt" not in extra:
        args += ["--prompt", "a cat"]
    result = run(*args, *extra)
    assert isinstance(result.exception, error), result.output
    assert message in str(result.exception)
    assert not list(tmp_path.glob("*.png"))


def test_prompt_source_is_required_and_unmatched_files_are_refused(assets, tmp_path):
    result = run("--model", assets.single, *COMMON, "--outdir", tmp_path)
    assert isinstance(result.exception, ConfigError) and "give either --prompt or --from_file" in str(result.exception)
    stray = tmp_path / "stray.safetensors"
    save_adapter(stray, {"lora_unet_nowhere.lora_down.weight": torch.ones(1, 4),
                         "lora_unet_nowhere.lora_up.weight": torch.ones(4, 1)})
    result = run("--model", assets.single, "--network_weights", stray, "--prompt", "a cat", *COMMON,
                 "--outdir", tmp_path / "out")
    assert isinstance(result.exception, FormatError)
    assert "2 keys load nowhere (e.g. lora_unet_nowhere.lora_down.weight: no such layer" in str(result.exception)
    result = run("--model", assets.single, "--network_weights", stray, "--allow_unmatched", "--prompt", "a cat",
                 *COMMON, "--outdir", tmp_path / "out")
    assert isinstance(result.exception, FormatError)
    assert "none of its modules matches a layer of this model" in str(result.exception)


def test_every_prompt_is_checked_before_the_first_image(assets, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog --h 36\n")
    result = run("--model", assets.single, "--from_file", prompts, *COMMON, "--outdir", tmp_path / "out")
    assert isinstance(result.exception, ConfigError) and "size 32x36" in str(result.exception)
    assert not list(tmp_path.glob("out/*.png"))
