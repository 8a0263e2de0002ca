"""The CLI as users and job schedulers meet it: start-up cost, signals, runs that blow up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tool_support import random_lora
from train_fixtures import Workspace, base_args, run_adapt, workspace_fixture  # noqa: F401

from adapters_core.formats import save_adapter

HEAVY = ("torch", "diffusers", "transformers", "safetensors", "accelerate")

_IMPORTS = """
import sys
from adapt_cli.main import main
code = main({argv!r})
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & {heavy!r})
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code))
"""


def _imports_of(argv: list[str]) -> tuple[str, int]:
    script = _IMPORTS.format(argv=argv, heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    line = next(line for line in done.stdout.splitlines() if line.startswith("HEAVY="))
    heavy, code = line.split(" CODE=")
    return heavy.removeprefix("HEAVY="), int(code)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["merge", "--help"], 0),
        (["train", "--help"], 0),
        (["generate", "--help"], 0),
        (["merge", "--models", "missing.safetensors", "--save_to", "x.safetensors"], 2),
        (["resize", "--model", "missing.safetensors", "--save_to", "x.safetensors", "--new_rank", "0"], 2),
        (["generate", "--model", ".", "--prompt", "a", "--outdir", "o", "--steps", "nan"], 2),
        (["train", "--network_dim", "-4"], 2),
    ],
)
def test_help_and_argument_errors_import_no_heavy_library(argv: list[str], code: int) -> None:
    heavy, exit_code = _imports_of(argv)
    assert exit_code == code
    assert heavy == "", f"adapt {' '.join(argv)} imported {heavy}"


def test_tools_on_files_import_torch_and_safetensors_only(tmp_path: Path) -> None:
    """inspect, check and merge (of adapters, into a single file, a Diffusers folder into a
    folder) import no diffusers, transformers or accelerate: the bundled models' layers come
    from the families' shipped layer tables (a folder of the bundled model's architecture:
    its state-dict keys too), a single file's layers from its key table (issue: instant CLI)."""
    from adapters_core.models import build_tiny_model, write_tiny_model

    lora = tmp_path / "a.safetensors"
    save_adapter(lora, random_lora(build_tiny_model(), seed=1), metadata={})
    model = tmp_path / "tiny.safetensors"
    write_tiny_model(tmp_path / "tiny", seed=0, single_file=model)
    for argv, code in ((["inspect", str(lora)], 0), (["check", str(lora), "--model", "tiny"], 0),
                       (["check", str(lora)], 1),  # against SD 1.x (no metadata): the tiny names miss
                       (["merge", "--models", str(lora), str(lora), "--save_to", str(tmp_path / "m.safetensors")], 0),
                       (["merge", "--sd_model", str(model), "--models", str(lora),  # streamed tensor by tensor
                         "--save_to", str(tmp_path / "merged.safetensors")], 0),
                       (["merge", "--sd_model", str(tmp_path / "tiny"), "--models", str(lora),  # folder -> folder
                         "--save_to", str(tmp_path / "merged")], 0)):
        heavy, exit_code = _imports_of(argv)
        assert (heavy, exit_code) == ("safetensors,torch", code), argv


def _train_process(workspace: Workspace, output: Path, *extra: str, steps: int) -> subprocess.Popen[str]:
    argv = base_args(workspace, output, "--save_state", *extra, steps=steps)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "adapt_cli.main", "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigterm_during_training_saves_like_ctrl_c_and_exits_143(workspace: Workspace, tmp_path: Path) -> None:
    output = tmp_path / "out"
    process = _train_process(workspace, output, "--output_name", "run", steps=100_000)
    seen = ""
    deadline = time.monotonic() + 240
    assert process.stderr is not None
    while "steps:" not in seen or "1/100000" not in seen:  # training has begun (one step done)
        seen += process.stderr.read(1)
        assert time.monotonic() < deadline and process.poll() is None, seen
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=240)
    assert process.returncode == 143, rest
    assert "Traceback" not in seen + rest
    assert (output / "run-interrupted.safetensors").is_file()
    states = [p for p in output.iterdir() if p.name.endswith("-state")]
    assert len(states) == 1 and json.loads((states[0] / "train_state.json").read_text())["current_step"] >= 1


def test_an_exploding_update_leaves_no_checkpoint(workspace: Workspace, tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    argv = base_args(workspace, output, "--save_every_n_steps", "1", steps=4)
    argv[argv.index("--learning_rate") + 1] = "1e30"  # one Adam update puts the weights near 1e30, still finite
    run = run_adapt(["train", *argv], capsys)
    assert run.code == 2
    error = [line for line in run.output.splitlines() if line.startswith("adapt: error:")]
    assert len(error) == 1 and "step 1: the weights this update produced give a loss of" in error[0]
    assert "the checkpoint of step 1 was not written" in error[0]
    assert not output.exists() or list(output.iterdir()) == []


def test_resuming_with_another_optimizer_is_refused_before_training(workspace: Workspace, tmp_path: Path, capsys) -> None:
    first = base_args(workspace, tmp_path / "a", "--save_state", steps=1)
    assert run_adapt(["train", *first]).code == 0
    state = tmp_path / "a" / "last-state"
    assert json.loads((state / "train_state.json").read_text())["optimizer"] == "AdamW"
    resumed = base_args(workspace, tmp_path / "b", "--resume", str(state), "--optimizer_type", "Lion", steps=2)
    run = run_adapt(["train", *resumed], capsys)
    assert run.code == 2
    assert "the state was saved by optimizer AdamW, this run uses Lion" in run.output
    assert not (tmp_path / "b").exists()
    (state / "model.safetensors").write_bytes((state / "model.safetensors").read_bytes()[:100])  # truncated
    resumed = base_args(workspace, tmp_path / "c", "--resume", str(state), steps=2)
    run = run_adapt(["train", *resumed], capsys)
    assert run.code == 2 and "Traceback" not in run.output
    assert f"--resume {state}: the state does not fit this run" in run.output
    assert not (tmp_path / "c").exists()


def test_generate_stops_when_the_latents_become_non_finite(workspace: Workspace, tmp_path: Path, capsys) -> None:
    from adapters_core.models import load_sd_model

    model = load_sd_model(workspace.model)
    tensors = random_lora(model, scale=1.0)
    huge = {k: (v * 1e15 if k.endswith("lora_up.weight") else v) for k, v in tensors.items()}  # finite, explosive
    adapter = tmp_path / "huge.safetensors"
    save_adapter(adapter, huge)
    assert all(torch.isfinite(t).all() for t in huge.values())
    outdir = tmp_path / "images"
    argv = ["generate", "--model", str(workspace.model), "--network_weights", str(adapter), "--prompt", "a red circle",
            "--steps", "2", "--W", "32", "--H", "32", "--seed", "1", "--outdir", str(outdir)]
    run = run_adapt(argv, capsys)
    assert run.code == 2
    assert "the latents became NaN or infinite at step 1; nothing was written" in run.output
    assert not outdir.exists()
