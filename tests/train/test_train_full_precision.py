"""--full_bf16 / --full_fp16: the adapter's own weights, gradients and optimizer state in the
--mixed_precision dtype (kohya's semantics); saved files still follow --save_precision."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from train_fixtures import Workspace, base_args, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

from adapt_cli.commands.train import resolve_args
from adapt_cli.commands.train import train as train_command
from adapters_core.errors import ConfigError
from adapters_core.formats import load_adapter
from adapters_core.train.args import TrainArgs
from adapters_core.train.components import network_dtype
from adapters_core.train.loop import Trainer
from adapters_core.train.optimizers import build_optimizer
from adapters_core.train.runtime import allow_float16_gradients


def train_args(argv: list[str]) -> TrainArgs:
    """The TrainArgs the CLI builds from ``argv`` (the Python API then runs them)."""
    ctx = train_command.make_context("train", list(argv))
    return resolve_args(ctx, dict(ctx.params))


def dtypes_in_training(trainer: Trainer) -> tuple[set[torch.dtype], set[torch.dtype]]:
    """(the adapter parameters' dtypes, the dtypes of the optimizer's moment tensors)."""
    params = {p.dtype for p in trainer.network.parameters()}
    moments = {v.dtype for s in trainer.optimizer.optimizer.state.values() for k, v in s.items() if k != "step"}
    return params, moments


def lora_ups(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_adapter(path).tensors.items() if k.endswith("lora_up.weight")}


def test_the_adapter_dtype_rule() -> None:
    assert network_dtype(TrainArgs()) == torch.float32
    assert network_dtype(TrainArgs(mixed_precision="bf16")) == torch.float32  # the base model only
    assert network_dtype(TrainArgs(mixed_precision="bf16", full_bf16=True)) == torch.bfloat16
    assert network_dtype(TrainArgs(mixed_precision="fp16", full_fp16=True)) == torch.float16
    with pytest.raises(ConfigError, match=r"^--full_bf16: needs --mixed_precision bf16 \(got --mixed_precision no\)"):
        TrainArgs(full_bf16=True).check_full_precision()
    with pytest.raises(ConfigError, match=r"^--full_fp16: needs --mixed_precision fp16 \(got --mixed_precision bf16\)"):
        TrainArgs(mixed_precision="bf16", full_fp16=True).check_full_precision()
    with pytest.raises(ConfigError, match="^--full_bf16 and --full_fp16: give at most one"):
        TrainArgs(mixed_precision="bf16", full_bf16=True, full_fp16=True).check_full_precision()


def test_full_bf16_trains_the_adapter_in_bfloat16(workspace: Workspace, tmp_path: Path, capsys) -> None:
    argv = base_args(workspace, tmp_path / "a", "--mixed_precision", "bf16", "--full_bf16", "--no_report_images", steps=3)
    trainer = Trainer(train_args(argv), show_progress=False)
    result = trainer.run()
    assert dtypes_in_training(trainer) == ({torch.bfloat16}, {torch.bfloat16})
    assert result.first_loss is not None and result.average_loss is not None
    assert torch.isfinite(torch.tensor([result.first_loss, result.average_loss])).all()
    adapter = load_adapter(result.output)
    assert {t.dtype for t in adapter.tensors.values()} == {torch.float32}  # no --save_precision: float32
    assert all(torch.isfinite(t).all() for t in adapter.tensors.values())
    assert all(up.abs().sum() > 0 for up in lora_ups(result.output).values())  # lora_up starts at 0
    meta = adapter.metadata
    assert (meta["ss_mixed_precision"], meta["ss_full_bf16"], meta["ss_full_fp16"]) == ("bf16", "True", "False")

    # the CLI: --save_precision bf16 writes bfloat16; without --full_bf16 the adapter trains in float32
    run = run_adapt(["train", *base_args(workspace, tmp_path / "b", "--mixed_precision", "bf16", "--full_bf16",
                                         "--save_precision", "bf16", "--no_report_images", steps=3)], capsys)
    assert run.code == 0, run.output
    saved = load_adapter(tmp_path / "b" / "last.safetensors")
    assert {t.dtype for t in saved.tensors.values()} == {torch.bfloat16}
    for key, value in saved.tensors.items():  # the same run: the same weights, rounded to bf16
        torch.testing.assert_close(value, adapter.tensors[key].to(torch.bfloat16), atol=0, rtol=0)
    plain = Trainer(replace(train_args(argv), full_bf16=False, output_dir=str(tmp_path / "c")), show_progress=False)
    plain.run()
    assert dtypes_in_training(plain) == ({torch.float32}, {torch.float32})


def test_a_state_resumes_with_or_without_full_bf16(workspace: Workspace, tmp_path: Path) -> None:
    """A --save_state folder is resumed in the new run's dtype: weights and optimizer moments are
    converted (bf16 -> float32 exactly; float32 -> bf16 rounded) and training goes on."""
    common = ["--train_data_dir", str(workspace.small_dir), "--no_report_images"]
    bf16 = ["--mixed_precision", "bf16"]
    full = base_args(workspace, tmp_path / "full", *common, *bf16, "--full_bf16", "--save_every_n_steps", "2",
                     "--save_state", steps=4)
    uninterrupted = Trainer(train_args(full), show_progress=False).run()
    state = tmp_path / "full" / "at-step00000002-state"
    assert {t.dtype for t in load_adapter(state / "model.safetensors").tensors.values()} == {torch.bfloat16}
    saved_moments = torch.load(state / "optimizer.bin", weights_only=True)["state"]
    assert {v.dtype for s in saved_moments.values() for k, v in s.items() if k != "step"} == {torch.bfloat16}

    for name, extra in (("to_float32", []), ("to_bf16_again", ["--full_bf16"])):
        argv = base_args(workspace, tmp_path / name, *common, *bf16, *extra, "--resume", str(state), steps=4)
        trainer = Trainer(train_args(argv), show_progress=False)
        result = trainer.run()
        wanted = torch.bfloat16 if extra else torch.float32
        assert dtypes_in_training(trainer) == ({wanted}, {wanted}), name
        assert result.steps == 4
        want = lora_ups(uninterrupted.output)
        for key, value in lora_ups(result.output).items():
            if extra:  # the same dtype: exactly the uninterrupted run
                torch.testing.assert_close(value, want[key], atol=0, rtol=0)
            else:  # float32 steps from the state's weights (a fresh start would be off by about half)
                assert (value - want[key]).abs().max() <= 0.1 * want[key].abs().max(), key


def test_float16_gradients_unscale_and_adamw_steps_without_nan() -> None:
    """--full_fp16's two pieces, on the CPU's gradient scaler: the scaler unscales float16
    gradients (and still skips a step whose gradients overflow), and AdamW on float16 weights
    takes a zero gradient (lora_down's first step) without 0/0."""
    weight = torch.nn.Parameter(torch.full((3,), 0.5, dtype=torch.float16))
    untouched = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    optimizer = build_optimizer("AdamW", [{"params": [weight, untouched]}], 1e-2, {}).optimizer
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((weight * 2).sum() + (untouched * 0).sum()).backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.full((3,), 2048.0, dtype=torch.float16))
    with pytest.raises(ValueError, match="FP16 gradients"):  # torch's own scaler refuses them
        scaler.unscale_(optimizer)
    allow_float16_gradients(scaler)
    scaler.unscale_(optimizer)
    assert torch.equal(weight.grad, torch.full((3,), 2.0, dtype=torch.float16))
    scaler.step(optimizer)
    scaler.update()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.49, dtype=torch.float16))  # lr * sign, minus decay
    assert torch.equal(untouched.detach(), torch.zeros(3, dtype=torch.float16))
    before = weight.detach().clone()
    weight.grad = torch.tensor([float("inf"), 0.0, 0.0], dtype=torch.float16)
    untouched.grad = torch.zeros(3, dtype=torch.float16)
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(weight.detach(), before) and scaler.get_scale() == 512.0  # skipped, scale halved

    plain = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    unfused = torch.optim.AdamW([plain], lr=1e-2)  # why AdamW runs fused on float16 weights
    plain.grad = torch.zeros(3, dtype=torch.float16)
    unfused.step()
    assert torch.isnan(plain.detach()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="--full_fp16 needs a CUDA GPU (fp16's gradient scaler)")
def test_full_fp16_trains_on_a_cuda_gpu(workspace: Workspace, tmp_path: Path) -> None:
    argv = base_args(workspace, tmp_path, "--mixed_precision", "fp16", "--full_fp16", "--no_report_images", steps=8)
    trainer = Trainer(train_args(argv), show_progress=False)
    result = trainer.run()
    assert dtypes_in_training(trainer) == ({torch.float16}, {torch.float16})
    assert trainer.accelerator.scaler is not None and trainer.optimizer.optimizer.defaults["fused"]
    assert result.average_loss is not None and torch.isfinite(torch.tensor(result.average_loss))
    adapter = load_adapter(result.output)
    assert {t.dtype for t in adapter.tensors.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in adapter.tensors.values())
    assert all(up.abs().sum() > 0 for up in lora_ups(result.output).values())  # some steps were not skipped
    assert adapter.metadata["ss_full_fp16"] == "True"
