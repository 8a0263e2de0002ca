"""Checkpoint names, pruning, refusing to overwrite, minimal metadata, logs."""

from __future__ import annotations

import os
from pathlib import Path

from train_fixtures import Workspace, base_args, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

from adapters_core.formats import load_metadata
from adapters_core.train.saving import OutputNames, remove_epoch_number, remove_step_number


def test_save_every_n_epochs_and_steps_with_kohya_names_and_pruning(workspace: Workspace, tmp_path: Path) -> None:
    # 4 images, batch 2 -> 2 steps per epoch; 6 steps = 3 epochs
    argv = base_args(
        workspace,
        tmp_path,
        "--train_data_dir",
        str(workspace.small_dir),
        "--train_batch_size",
        "2",
        "--save_every_n_epochs",
        "1",
        "--save_every_n_steps",
        "2",
        "--save_last_n_steps",
        "2",
        "--output_name",
        "run",
        steps=6,
    )
    assert run_adapt(["train", *argv]).code == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "run-000001.safetensors",
        "run-000002.safetensors",
        "run-step00000004.safetensors",
        "run-step00000006.safetensors",
        "run.safetensors",
        "run_loss.png",  # the training report's loss plot
    ]
    epoch1 = load_metadata(tmp_path / "run-000001.safetensors")
    assert epoch1["ss_epoch"] == "1" and epoch1["ss_steps"] == "2"
    assert load_metadata(tmp_path / "run.safetensors")["ss_num_epochs"] == "3"


def test_default_checkpoint_names_and_max_train_epochs(workspace: Workspace, tmp_path: Path) -> None:
    argv = base_args(
        workspace,
        tmp_path,
        "--train_data_dir",
        str(workspace.small_dir),
        "--train_batch_size",
        "4",
        "--max_train_epochs",
        "2",
        "--save_every_n_epochs",
        "1",
        "--save_every_n_steps",
        "1",
        "--save_last_n_epochs",
        "1",
        "--no_report_images",
    )
    assert run_adapt(["train", *argv]).code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "at-step00000001.safetensors",
        "at-step00000002.safetensors",
        "epoch-000001.safetensors",
        "last.safetensors",
    ]
    assert load_metadata(tmp_path / "last.safetensors")["ss_max_train_steps"] == "2"


def test_existing_output_is_refused_at_start_unless_overwrite(
    workspace: Workspace, tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "last.safetensors").write_bytes(b"precious")
    import adapters_core.train.components as components

    def no_model(*args, **kwargs):
        raise AssertionError("the base model must not be loaded")

    monkeypatch.setattr(components, "load_sd_model", no_model)
    run = run_adapt(["train", *base_args(workspace, tmp_path)], capsys)
    assert run.code == 2 and "output exists; pass --overwrite" in run.output
    assert (tmp_path / "last.safetensors").read_bytes() == b"precious"
    monkeypatch.undo()
    assert run_adapt(["train", *base_args(workspace, tmp_path), "--overwrite"]).code == 0
    assert load_metadata(tmp_path / "last.safetensors")["ss_steps"] == "2"


def test_no_metadata_keeps_the_minimum_and_modelspec(workspace: Workspace, tmp_path: Path) -> None:
    assert (
        run_adapt(
            [
                "train",
                *base_args(
                    workspace, tmp_path, "--no_metadata", "--network_args", "dropout=0.1", "--metadata_author", "me"
                ),
            ]
        ).code
        == 0
    )
    md = load_metadata(tmp_path / "last.safetensors")
    ss = {k for k in md if k.startswith("ss_")}
    assert ss == {
        "ss_v2",
        "ss_base_model_version",
        "ss_network_module",
        "ss_network_dim",
        "ss_network_alpha",
        "ss_network_args",
    }
    assert md["modelspec.author"] == "me" and "sshs_model_hash" in md


def test_tensorboard_logs_and_lr_warmup(workspace: Workspace, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = base_args(
        workspace,
        tmp_path / "out",
        "--logging_dir",
        str(tmp_path / "logs"),
        "--log_prefix",
        "run-",
        "--lr_scheduler",
        "constant_with_warmup",
        "--lr_warmup_steps",
        "2",
        "--network_train_unet_only",
        steps=3,
    )
    assert run_adapt(["train", *argv]).code == 0
    (run_dir,) = list((tmp_path / "logs").iterdir())
    assert run_dir.name.startswith("run-")
    events = [os.path.join(root, f) for root, _, files in os.walk(run_dir) for f in files if "tfevents" in f]
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event_file in events:
        accumulator = EventAccumulator(event_file)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    assert {"loss/current", "loss/average", "lr/unet", "loss/epoch_average"} <= set(scalars)
    lrs = dict(scalars["lr/unet"])
    assert abs(lrs[1] - 0.5e-3) < 1e-9 and abs(lrs[2] - 1e-3) < 1e-9 and abs(lrs[3] - 1e-3) < 1e-9


def test_names_and_removal_rules() -> None:
    names = OutputNames(Path("o"), None, "pt")
    assert names.final() == Path("o/last.pt") and names.epoch(3) == Path("o/epoch-000003.pt")
    assert names.step(12) == Path("o/at-step00000012.pt") and names.step_state(12) == Path("o/at-step00000012-state")
    assert names.final_state() == Path("o/last-state")
    assert remove_epoch_number(5, 1, 2) == 3 and remove_epoch_number(2, 1, 2) is None
    assert remove_step_number(50, 10, 30) == 10 and remove_step_number(30, 10, 30) is None
