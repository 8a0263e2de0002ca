"""--cache_text_encoder_outputs(_to_disk): same results as without, the encoder never runs in a
step, cache files reused and invalidated, incompatible options refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_train_data_and_safety import no_model_load  # noqa: F401
from train_fixtures import (  # noqa: F401
    Workspace,
    base_args,
    copy_data,
    one_thread_fixture,
    run_adapt,
    workspace_fixture,
)

import adapters_core.train.loop as loop
from adapters_core.formats import load_adapter
from adapters_core.models import clip_text as text
from adapters_core.models import write_tiny_model
from adapters_core.train.text_cache import load_outputs_npz, save_outputs_npz

REAL_COMPUTE_LOSS = loop.compute_loss
REAL_ENCODE = text.encode


@dataclass
class Recorded:
    code: int = -1
    output: str = ""
    losses: list[float] = field(default_factory=list)
    encoded_rows: int = 0  # text-encoder input rows (captions) over the whole run
    encoder_calls_in_steps: int = 0
    encoder_devices_in_steps: set[str] = field(default_factory=set)


def recorded_run(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> Recorded:
    """Run ``adapt train`` and record each step's loss and every text-encoder call."""
    seen = Recorded()
    in_step = [False]
    checking = [False]  # the forward that checks a checkpoint's weights is not part of training

    def counting_encode(text_encoder, input_ids, clip_skip=None):
        if not checking[0]:
            seen.encoded_rows += input_ids.shape[0]
        seen.encoder_calls_in_steps += in_step[0]
        return REAL_ENCODE(text_encoder, input_ids, clip_skip)

    def recording_loss(ctx, batch):
        in_step[0] = True
        try:
            loss = REAL_COMPUTE_LOSS(ctx, batch)
        finally:
            in_step[0] = False
        seen.losses.append(float(loss.detach()))
        seen.encoder_devices_in_steps.add(ctx.model.text_encoder.device.type)
        return loss

    def checking_loss(ctx, batch):
        checking[0] = True
        try:
            return REAL_COMPUTE_LOSS(ctx, batch)
        finally:
            checking[0] = False

    monkeypatch.setattr(text, "encode", counting_encode)
    monkeypatch.setattr(loop, "compute_loss", recording_loss)
    monkeypatch.setattr(loop.step_module, "compute_loss", checking_loss)
    run = run_adapt(["train", *argv], capsys)
    seen.code, seen.output = run.code, run.output
    return seen


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_adapter(folder / "last.safetensors").tensors


@pytest.mark.parametrize(
    "extra, steps, distinct",
    [
        ([], 4, 4),
        (
            # 2 epochs of 4 steps, every caption dropped in epoch 2 (the empty caption is cached too);
            # long captions and the penultimate layer go through the cache unchanged
            ["--caption_dropout_every_n_epochs", "2", "--clip_skip", "2", "--max_token_length", "150"],
            8,
            5,
        ),
    ],
)
def test_cached_run_matches_uncached_bit_for_bit_without_running_the_encoder(
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    extra: list[str],
    steps: int,
    distinct: int,
) -> None:
    common = ["--train_data_dir", str(workspace.small_dir), "--network_train_unet_only", *extra]
    plain = recorded_run(base_args(workspace, tmp_path / "plain", *common, steps=steps), monkeypatch, capsys)
    cached = recorded_run(
        base_args(workspace, tmp_path / "cached", *common, "--cache_text_encoder_outputs", steps=steps),
        monkeypatch,
        capsys,
    )
    assert plain.code == 0 and cached.code == 0, cached.output
    assert len(cached.losses) == steps
    assert cached.losses == plain.losses  # exactly, step by step
    plain_weights, cached_weights = weights(tmp_path / "plain"), weights(tmp_path / "cached")
    assert plain_weights.keys() == cached_weights.keys()
    assert all(torch.equal(plain_weights[k], cached_weights[k]) for k in plain_weights)
    assert plain.encoder_calls_in_steps == steps and plain.encoded_rows == steps
    assert cached.encoder_calls_in_steps == 0
    assert cached.encoded_rows == distinct  # each distinct caption once, before training
    assert f"0 from cache files, {distinct} captions encoded" in cached.output
    assert cached.encoder_devices_in_steps == {"meta"}  # the encoder's weights left memory
    assert plain.encoder_devices_in_steps == {"cpu"}


def test_sample_prompts_keep_the_encoder(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks shape --w 32 --h 32 --s 2 --d 5\n", encoding="utf-8")
    flags = ["--network_train_unet_only", "--cache_text_encoder_outputs", "--sample_prompts", str(prompts)]
    argv = base_args(workspace, tmp_path / "out", *flags, "--sample_every_n_steps", "2", steps=2)
    run = recorded_run(argv, monkeypatch, capsys)
    assert run.code == 0 and run.encoder_calls_in_steps == 0
    assert run.encoder_devices_in_steps == {"cpu"}  # kept: the samples need it
    samples = [p for p in (tmp_path / "out" / "sample").glob("*.png") if not p.name.endswith("_grid.png")]
    assert len(samples) == 1  # (beside it, the round's grid of the training report)


def te_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*_te_outputs.npz")}


def test_disk_cache_is_reused_and_invalidated(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = copy_data(workspace, tmp_path / "data")
    flags = ["--network_train_unet_only", "--cache_text_encoder_outputs_to_disk", "--overwrite"]
    argv = base_args(workspace, tmp_path / "out", "--train_data_dir", str(data), *flags, steps=1)
    first = recorded_run(argv, monkeypatch, capsys)
    assert first.code == 0 and "0 from cache files, 4 captions encoded" in first.output
    written = te_files(data)
    assert sorted(written) == [f"00{i}_te_outputs.npz" for i in range(4)]
    first_weights = weights(tmp_path / "out")

    again = recorded_run(argv, monkeypatch, capsys)
    assert "4 from cache files, 0 captions encoded" in again.output and again.encoded_rows == 0
    assert te_files(data) == written  # reused, not rewritten
    assert again.losses == first.losses
    assert all(torch.equal(first_weights[k], v) for k, v in weights(tmp_path / "out").items())

    (data / "10_sks shape" / "001.txt").write_text("sks shape, a new caption\n", encoding="utf-8")
    edited = recorded_run(argv, monkeypatch, capsys)
    assert "3 from cache files, 1 captions encoded" in edited.output and edited.encoded_rows == 1
    after = te_files(data)
    assert after["001_te_outputs.npz"] != written["001_te_outputs.npz"]
    assert all(after[name] == written[name] for name in written if not name.startswith("001"))

    for changed in (["--clip_skip", "2"], ["--max_token_length", "150"]):
        run = recorded_run([*argv, *changed], monkeypatch, capsys)
        assert run.code == 0 and "0 from cache files, 4 captions encoded" in run.output, changed
    other_model = tmp_path / "other_model"
    write_tiny_model(other_model, seed=1)  # other text-encoder weights
    run = recorded_run([*argv, "--pretrained_model_name_or_path", str(other_model)], monkeypatch, capsys)
    assert run.code == 0 and "0 from cache files, 4 captions encoded" in run.output


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--cache_text_encoder_outputs: needs --network_train_unet_only"),
        (["--network_train_unet_only", "--shuffle_caption"], "cannot be used with shuffle_caption"),
        (["--network_train_unet_only", "--caption_dropout_rate", "0.1"], "cannot be used with caption_dropout_rate"),
        (["--network_train_unet_only", "--caption_tag_dropout_rate", "0.1"], "cannot be used with caption_tag_dropout"),
        (["--network_train_unet_only", "--token_warmup_step", "2"], "cannot be used with token_warmup_step"),
        (["--network_train_unet_only", "--enable_wildcard"], "cannot be used with enable_wildcard"),
    ],
)
def test_incompatible_options_give_one_line_before_the_model_loads(
    workspace: Workspace, tmp_path: Path, capsys, no_model_load, extra: list[str], message: str  # noqa: F811
) -> None:
    argv = base_args(workspace, tmp_path, "--cache_text_encoder_outputs_to_disk", *extra)
    run = run_adapt(["train", *argv], capsys)
    assert run.code == 2 and message in run.output and "Traceback" not in run.output


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cache_file_round_trip_keeps_values_and_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "a_te_outputs.npz"
    outputs = {"hidden_state1": torch.randn(77, 8).to(dtype), "pool2": torch.randn(8).to(dtype)}
    save_outputs_npz(path, outputs, "a caption", "print")
    loaded = load_outputs_npz(path, "a caption", "print")
    assert loaded is not None and loaded.keys() == outputs.keys()
    assert all(loaded[k].dtype == dtype and torch.equal(loaded[k], outputs[k]) for k in outputs)
    assert load_outputs_npz(path, "another caption", "print") is None
    assert load_outputs_npz(path, "a caption", "another print") is None
    path.write_bytes(b"not an npz")
    assert load_outputs_npz(path, "a caption", "print") is None
