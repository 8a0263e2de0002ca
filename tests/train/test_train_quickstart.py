"""``adapt quickstart``: the demo trains offline and the LoRA measurably learns."""

from __future__ import annotations

from pathlib import Path

import torch
from train_fixtures import one_thread_fixture, run_adapt  # noqa: F401

from adapters_core.models import load_sd_model
from adapters_core.network import Network


def test_quickstart_learns_and_changes_the_unet(tmp_path: Path, capsys) -> None:
    run = run_adapt(["quickstart", "--output_dir", str(tmp_path), "--max_train_steps", "30"], capsys)
    assert run.code == 0, run.output
    line = next(line for line in run.output.splitlines() if line.startswith("denoising loss"))
    before, after = (float(word.rstrip(",")) for word in line.split() if word[0].isdigit())
    assert after < 0.85 * before, line
    adapter = tmp_path / "output" / "quickstart.safetensors"
    assert f"LoRA written to {adapter}" in run.output

    model = load_sd_model(tmp_path / "model")
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, 16, 16, generator=generator),
        torch.tensor([500]),
        torch.randn(1, 77, 32, generator=generator),
    )
    with torch.no_grad():
        base = model.unet(*inputs).sample
        Network.from_file(adapter, unet=model.unet, text_encoder=model.text_encoder).apply()
        adapted = model.unet(*inputs).sample
    assert (adapted - base).abs().max() > 1e-3

    assert_report_and_grid(tmp_path / "output", run.output)

    again = run_adapt(["quickstart", "--output_dir", str(tmp_path), "--max_train_steps", "2"], capsys)
    assert again.code == 2 and "pass --overwrite" in again.output


def assert_report_and_grid(output: Path, printed: str) -> None:
    """Samples at steps 0, 10, 20, 30 (one grid each), the contact sheet, the loss plot, and the
    checkpoints-by-multiplier grid whose multiplier-0 images are the base model's for every checkpoint."""
    import json

    import numpy as np
    from PIL import Image

    from adapters_core.generate.grid import GRID_KEY
    from adapters_core.generate.png import PARAMETERS_KEY

    assert len(list((output / "sample").glob("*_grid.png"))) == 4
    for name in ("quickstart_samples.png", "quickstart_loss.png"):
        assert f"training report: {output / name}" in printed
    grid_file = output / "grid" / "grid-00000.png"
    assert f"checkpoints by multiplier: {grid_file}" in printed
    with Image.open(grid_file) as grid:
        axes = json.loads(grid.text[GRID_KEY])["axes"]
    assert axes[0]["values"] == [f"quickstart-step{n:08d}" for n in (10, 20, 30)]
    cells = {}
    for single in (output / "grid").glob("0*.png"):
        with Image.open(single) as image:
            tag = image.text[PARAMETERS_KEY].split("<lora:")[1].split(">")[0]
            cells[tag] = np.asarray(image.convert("RGB"))
    assert len(cells) == 9
    base = cells["quickstart-step00000010:0"]
    assert all(np.array_equal(base, cells[f"quickstart-step{n:08d}:0"]) for n in (20, 30))
    assert not np.array_equal(base, cells["quickstart-step00000030:1"])


def test_quickstart_on_the_tiny_sdxl_model(tmp_path: Path, capsys) -> None:
    from adapters_core.formats import load_adapter

    argv = ["quickstart", "--model_family", "tiny_sdxl", "--output_dir", str(tmp_path), "--max_train_steps", "30",
            "--learning_rate", "1e-2"]  # the tiny SDXL learns slower than the tiny SD model: 30 steps at 2e-3 gain 0.2%
    run = run_adapt(argv, capsys)
    assert run.code == 0, run.output
    line = next(line for line in run.output.splitlines() if line.startswith("denoising loss"))
    before, after = (float(word.rstrip(",")) for word in line.split() if word[0].isdigit())
    assert after < 0.97 * before, line
    assert load_sd_model(tmp_path / "model").family.name == "tiny_sdxl"
    adapter = load_adapter(tmp_path / "output" / "quickstart.safetensors")
    assert adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {key.split("_")[1] for key in adapter.tensors} == {"te1", "te2", "unet"}
    assert_report_and_grid(tmp_path / "output", run.output)

    # the workspace holds an SDXL model: the SD quickstart there is refused, not mixed in
    again = run_adapt(["quickstart", "--output_dir", str(tmp_path), "--max_train_steps", "2"], capsys)
    assert again.code == 2 and "holds a tiny_sdxl model, not tiny" in again.output, again.output
    for family, message in (("sd1", "has no demo model to train on; choose one of tiny, tiny_sdxl"),
                            ("nope", "nope")):
        refused = run_adapt(["quickstart", "--model_family", family, "--output_dir", str(tmp_path / "x")], capsys)
        assert refused.code == 2 and message in refused.output, refused.output
        assert not (tmp_path / "x").exists()
