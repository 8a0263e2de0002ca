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

    again = run_adapt(["quickstart", "--output_dir", str(tmp_path), "--max_train_steps", "2"], capsys)
    assert again.code == 2 and "pass --overwrite" in again.output
