"""Latent caching, data errors before any model load, divergence, sample images."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_fixtures import Workspace, base_args, copy_data, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

import adapters_core.train.components as components
import adapters_core.train.loop as loop


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the base model must not be loaded")

    monkeypatch.setattr(components, "load_sd_model", refuse)


def cache_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*_sd.npz")}


def test_latent_cache_on_disk_is_reused_and_invalidated(workspace: Workspace, tmp_path: Path, capsys) -> None:
    data = copy_data(workspace, tmp_path / "data")
    argv = base_args(
        workspace,
        tmp_path / "out",
        "--train_data_dir",
        str(data),
        "--cache_latents_to_disk",
        "--flip_aug",
        "--overwrite",
    )
    assert run_adapt(["train", *argv], capsys).code == 0
    first = cache_files(data)
    assert sorted(first) == [f"00{i}_0032x0032_sd.npz" for i in range(4)]
    run = run_adapt(["train", *argv], capsys)
    assert run.code == 0 and "4 images from cache files, 0 encoded" in run.output
    assert cache_files(data) == first  # reused, not rewritten
    image = data / "10_sks shape" / "001.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(image)  # edited in place: same name and size
    run = run_adapt(["train", *argv], capsys)
    assert "3 images from cache files, 1 encoded" in run.output
    after = cache_files(data)
    assert after["001_0032x0032_sd.npz"] != first["001_0032x0032_sd.npz"]
    assert all(after[n] == first[n] for n in first if not n.startswith("001"))
    smaller = [
        *argv,
        "--resolution",
        "16",
        "--enable_bucket",
        "--min_bucket_reso",
        "8",
        "--max_bucket_reso",
        "32",
        "--bucket_reso_steps",
        "8",
    ]  # another bucket: every cache is stale
    run = run_adapt(["train", *smaller], capsys)
    assert "0 images from cache files, 4 encoded" in run.output


def test_cache_latents_refuses_color_aug(workspace: Workspace, tmp_path: Path, capsys, no_model_load) -> None:
    run = run_adapt(["train", *base_args(workspace, tmp_path, "--cache_latents", "--color_aug")], capsys)
    assert run.code == 2 and "--cache_latents cannot be used with color_aug" in run.output


def test_bad_dataset_is_reported_before_the_model_loads(
    workspace: Workspace, tmp_path: Path, capsys, no_model_load
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    argv = base_args(workspace, tmp_path / "out", "--train_data_dir", str(flat))
    run = run_adapt(["train", *argv], capsys)
    assert run.code == 2
    assert "no subfolder named '<repeats>_<class tokens>'" in run.output
    assert "Traceback" not in run.output
    run = run_adapt(["train", *base_args(workspace, tmp_path / "out", "--resolution", "30")], capsys)
    assert run.code == 2 and "multiple of 8" in run.output


def test_nan_loss_stops_with_one_line_and_writes_nothing(
    workspace: Workspace, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.compute_loss
    calls = {"n": 0}

    def diverging(ctx, batch):
        calls["n"] += 1
        loss = real(ctx, batch)
        return loss * math.nan if calls["n"] == 3 else loss

    monkeypatch.setattr(loop, "compute_loss", diverging)
    run = run_adapt(
        ["train", *base_args(workspace, tmp_path, "--save_every_n_steps", "1", "--output_name", "n", steps=4)], capsys
    )
    assert run.code == 2
    error = [line for line in run.output.splitlines() if line.startswith("adapt: error:")]
    assert len(error) == 1 and "step 3: the loss is nan" in error[0] and "bf16" in error[0]
    assert not (tmp_path / "n.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n-step00000001.safetensors", "n-step00000002.safetensors"]


def test_absurd_learning_rate_diverges_cleanly(workspace: Workspace, tmp_path: Path, capsys) -> None:
    argv = base_args(
        workspace,
        tmp_path,
        "--learning_rate",
        "1e30",
        "--optimizer_type",
        "SGDNesterov",
        "--max_grad_norm",
        "0",
        steps=6,
    )
    run = run_adapt(["train", *argv], capsys)
    assert run.code == 2 and "adapt: error: step" in run.output
    assert not (tmp_path / "last.safetensors").exists()


def test_sample_images_during_training(workspace: Workspace, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# comment\nsks shape, red circle --n blurry --w 64 --h 64 --s 2 --d 5 --l 4\n"
        "sks shape --w 64 --h 64 --s 1 --ss euler_a\n",
        encoding="utf-8",
    )
    argv = base_args(
        workspace,
        tmp_path / "out",
        "--sample_prompts",
        str(prompts),
        "--sample_every_n_steps",
        "2",
        "--sample_at_first",
        "--output_name",
        "s",
    )
    assert run_adapt(["train", *argv]).code == 0
    sample = tmp_path / "out" / "sample"
    images = sorted(p.name for p in sample.iterdir() if not p.name.endswith("_grid.png"))
    assert len(images) == 4
    assert images[0].startswith("s_000000_00_") and images[0].endswith("_5.png")
    assert images[2].startswith("s_000002_00_")
    with Image.open(sample / images[0]) as image:
        assert image.size == (64, 64)
    assert_training_report(tmp_path / "out", [[sample / n for n in images[:2]], [sample / n for n in images[2:]]])


def assert_training_report(out: Path, rounds: list[list[Path]]) -> None:
    """One grid per sampling round, a contact sheet whose cells are the sample images, a loss plot."""
    from adapters_core.generate.grid_image import GridLayout, display_scale
    from adapters_core.train.report import prompt_label

    grids = sorted((out / "sample").glob("*_grid.png"))
    assert [g.name[:9] for g in grids] == ["s_000000_", "s_000002_"]
    scale = display_scale(64, 64)
    columns = [prompt_label("sks shape, red circle"), prompt_label("sks shape")]
    layout = GridLayout("s: samples", columns, ["step 0", "step 2"], [""], 64 * scale, 64 * scale)
    with Image.open(out / "s_samples.png") as sheet:
        assert sheet.size == (layout.width, layout.height)
        for row, images in enumerate(rounds):
            for column, path in enumerate(images):
                x, y = layout.cell_origin(column, row)
                cell = sheet.crop((x, y, x + layout.cell_width, y + layout.cell_height))
                cell = cell.resize((64, 64), Image.Resampling.NEAREST)
                with Image.open(path) as image:
                    assert list(cell.convert("RGB").getdata()) == list(image.convert("RGB").getdata())
    with Image.open(out / "s_loss.png") as plot:
        assert plot.size == (800, 450) and len(plot.convert("L").getcolors(1 << 16)) > 10  # drawn, not blank


def test_network_dropout_needs_a_type_that_has_it(tmp_path: Path) -> None:
    from adapters_core.errors import NetworkOptionError
    from adapters_core.train.args import TrainArgs
    from adapters_core.train.components import network_options, resolve_network_type

    options, raw = network_options(
        TrainArgs(network_dropout=0.1, network_args=("conv_dim=2",)), resolve_network_type("lora", None)
    )
    assert options["dropout"] == 0.1 and raw == {"conv_dim": "2"}
    with pytest.raises(NetworkOptionError):
        bare = resolve_network_type("lora", None)
        from dataclasses import replace

        network_options(TrainArgs(network_dropout=0.1), replace(bare, options=()))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert torch.get_default_dtype() == torch.float32
