"""Seeds, --save_state/--resume equivalence, Ctrl-C, and settings that must not change results."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from train_fixtures import Workspace, base_args, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

import adapters_core.train.loop as loop
from adapters_core.formats import load_adapter, load_metadata


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_adapter(path).tensors


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "--network",
            "dylora",
            "--network_args",
            "unit=2",
            "--gradient_accumulation_steps",
            "2",
            "--train_batch_size",
            "3",
            "--network_dropout",
            "0.2",
        ],
    ],
)
def test_resumed_run_ends_with_the_same_weights(workspace: Workspace, tmp_path: Path, extra: list[str]) -> None:
    common = [*extra, "--train_data_dir", str(workspace.small_dir), "--lr_scheduler", "cosine"]
    full = base_args(workspace, tmp_path / "full", *common, "--save_every_n_steps", "2", "--save_state", steps=5)
    assert run_adapt(["train", *full]).code == 0
    state = tmp_path / "full" / "at-step00000002-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 2
    assert (state / "model.safetensors").is_file() and (state / "optimizer.bin").is_file()
    assert sum(f.stat().st_size for f in state.iterdir()) < 2_000_000  # no copy of the base model
    resumed = base_args(workspace, tmp_path / "resumed", *common, "--resume", str(state), steps=5)
    assert run_adapt(["train", *resumed]).code == 0
    assert_close(tensors(tmp_path / "full" / "last.safetensors"), tensors(tmp_path / "resumed" / "last.safetensors"))
    assert load_metadata(tmp_path / "resumed" / "last.safetensors")["ss_steps"] == "5"


def test_gradient_checkpointing_and_workers_do_not_change_the_result(workspace: Workspace, tmp_path: Path) -> None:
    plain = base_args(workspace, tmp_path / "plain", "--train_batch_size", "2", steps=3)
    assert run_adapt(["train", *plain]).code == 0
    other = base_args(
        workspace,
        tmp_path / "other",
        "--train_batch_size",
        "2",
        "--gradient_checkpointing",
        "--xformers",
        "--persistent_data_loader_workers",
        steps=3,
    )
    other[other.index("--max_data_loader_n_workers") + 1] = "2"
    assert run_adapt(["train", *other]).code == 0
    assert_close(
        tensors(tmp_path / "plain" / "last.safetensors"), tensors(tmp_path / "other" / "last.safetensors"), 1e-5
    )


def test_bf16_mixed_precision_keeps_fp32_adapter(workspace: Workspace, tmp_path: Path, capsys) -> None:
    run = run_adapt(["train", *base_args(workspace, tmp_path, "--mixed_precision", "bf16", "--no_half_vae")], capsys)
    assert run.code == 0, run.output
    assert all(t.dtype == torch.float32 for t in tensors(tmp_path / "last.safetensors").values())
    run = run_adapt(["train", *base_args(workspace, tmp_path / "fp16", "--mixed_precision", "fp16")], capsys)
    if not torch.cuda.is_available():
        assert run.code == 2 and "needs a CUDA GPU" in run.output


def test_ctrl_c_saves_adapter_and_state_then_resume_finishes(
    workspace: Workspace, tmp_path: Path, capsys, monkeypatch
) -> None:
    real = loop.compute_loss
    calls = {"n": 0}

    def interrupting(ctx, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        return real(ctx, batch)

    monkeypatch.setattr(loop, "compute_loss", interrupting)
    run = run_adapt(["train", *base_args(workspace, tmp_path, "--output_name", "cc", steps=4)], capsys)
    assert run.code == 130
    assert "resume with --resume" in run.output
    interrupted = tmp_path / "cc-interrupted.safetensors"
    assert load_metadata(interrupted)["ss_steps"] == "2"
    assert not (tmp_path / "cc.safetensors").exists()
    monkeypatch.setattr(loop, "compute_loss", real)
    state = tmp_path / "cc-step00000002-state"
    assert (
        run_adapt(
            ["train", *base_args(workspace, tmp_path, "--output_name", "cc", "--resume", str(state), steps=4)]
        ).code
        == 0
    )
    assert load_metadata(tmp_path / "cc.safetensors")["ss_steps"] == "4"
