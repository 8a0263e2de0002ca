"""Network types and options of ``adapt train``: keys, counts, continuation, formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import Workspace, base_args, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

from adapters_core.formats import load_adapter, load_metadata


def trained(
    workspace: Workspace, out: Path, *extra: str, name: str = "last", ext: str = "safetensors", steps: int = 2
) -> dict[str, torch.Tensor]:
    run = run_adapt(["train", *base_args(workspace, out, *extra, steps=steps)])
    assert run.code == 0
    return load_adapter(out / f"{name}.{ext}").tensors


def modules(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {key.partition(".")[0] for key in tensors}


@pytest.mark.parametrize(
    ("network", "extra", "conv"),
    [
        ("c3lier", [], True),
        ("dylora", ["--network_args", "unit=2"], False),
        ("dylora", ["--network_args", "conv_dim=4", "unit=2"], True),
    ],
)
def test_types_write_plain_lora_keys(
    workspace: Workspace, tmp_path: Path, network: str, extra: list[str], conv: bool
) -> None:
    tensors = trained(workspace, tmp_path, "--network", network, "--network_dim", "4", *extra)
    names = modules(tensors)
    assert any("resnets_0_conv1" in n for n in names) == conv
    # tiny model: 12 text-encoder modules, 72 U-Net LierLa modules, 45 more 3x3/ResNet ones for C3Lier
    assert len(names) == (12 + 117 if conv else 12 + 72)
    assert len(tensors) == 3 * len(names)
    down = next(v for k, v in tensors.items() if "resnets_0_conv1.lora_down" in k) if conv else None
    if down is not None:
        assert down.shape[0] == 4 and down.shape[2:] == (3, 3)
    md = load_metadata(tmp_path / "last.safetensors")
    assert md["ss_network_module"] == ("networks.dylora" if network == "dylora" else "networks.lora")
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert any(v.abs().sum() > 0 for v in ups)  # it trained


def test_c3lier_records_its_conv_rank_for_readers(workspace: Workspace, tmp_path: Path) -> None:
    trained(workspace, tmp_path / "a", "--network", "c3lier", "--network_dim", "2", "--network_args", "dropout=0.1")
    md = load_metadata(tmp_path / "a" / "last.safetensors")
    assert json.loads(md["ss_network_args"]) == {"dropout": "0.1", "conv_dim": "2", "conv_alpha": "1.0"}
    trained(workspace, tmp_path / "b", "--network", "c3lier", "--network_alpha", "2")
    md = load_metadata(tmp_path / "b" / "last.safetensors")
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}


def test_unet_only_and_text_encoder_only(workspace: Workspace, tmp_path: Path) -> None:
    unet = modules(trained(workspace, tmp_path / "u", "--network_train_unet_only"))
    assert unet and all(n.startswith("lora_unet_") for n in unet)
    te = modules(trained(workspace, tmp_path / "t", "--network-train-text-encoder-only"))
    assert te and all(n.startswith("lora_te_") for n in te)


def test_network_weights_continue_and_dim_from_weights(workspace: Workspace, tmp_path: Path, capsys) -> None:
    first = trained(workspace, tmp_path / "a", "--network_dim", "2", "--network_alpha", "2")
    # lr 0: the continued network must be exactly the file it started from
    same = trained(
        workspace,
        tmp_path / "b",
        "--network_dim",
        "2",
        "--network_alpha",
        "2",
        "--network_weights",
        str(tmp_path / "a" / "last.safetensors"),
        "--learning_rate",
        "0",
    )
    assert all(torch.equal(first[k], same[k]) for k in first)
    shaped = trained(
        workspace,
        tmp_path / "c",
        "--dim_from_weights",
        "--learning_rate",
        "0",
        "--network_weights",
        str(tmp_path / "a" / "last.safetensors"),
    )
    assert all(torch.equal(first[k], shaped[k]) for k in first)
    run = run_adapt(
        [
            "train",
            *base_args(
                workspace,
                tmp_path / "d",
                "--network_dim",
                "4",
                "--network_weights",
                str(tmp_path / "a" / "last.safetensors"),
            ),
        ],
        capsys,
    )
    assert run.code == 2
    assert "file tensor has shape" in run.output and "lora_" in run.output


def test_network_weights_read_diffusers_and_peft_files(workspace: Workspace, tmp_path: Path) -> None:
    first = trained(workspace, tmp_path / "a", "--network_dim", "2", "--network_alpha", "2")
    for fmt, output in (("diffusers", "d.safetensors"), ("peft", "peft")):
        assert run_adapt(["convert", str(tmp_path / "a" / "last.safetensors"), str(tmp_path / output), "--to", fmt]).code == 0
        shaped = trained(workspace, tmp_path / fmt, "--dim_from_weights", "--learning_rate", "0",
                         "--network_weights", str(tmp_path / output))
        assert shaped.keys() == first.keys() and all(torch.equal(first[k], shaped[k]) for k in first)


def test_save_model_as_ckpt_and_precision(workspace: Workspace, tmp_path: Path) -> None:
    trained(workspace, tmp_path, "--save_model_as", "ckpt", "--save_precision", "fp16", ext="ckpt")
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert loaded and all(v.dtype == torch.float16 for k, v in loaded.items() if not k.endswith(".alpha"))


def test_block_lr_weights_drop_zero_blocks(workspace: Workspace, tmp_path: Path) -> None:
    tensors = trained(
        workspace,
        tmp_path,
        "--network_train_unet_only",
        "--network_args",
        "down_lr_weight=0,0,0,0,0,0,0,0,0,0,0,0",
        "mid_lr_weight=1",
        "up_lr_weight=1,1,1,1,1,1,1,1,1,1,1,1",
    )
    names = modules(tensors)
    assert names and not any("down_blocks" in n for n in names)


def test_optimizers_and_schedulers(workspace: Workspace, tmp_path: Path, capsys) -> None:
    for index, extra in enumerate(
        [
            ["--optimizer_type", "Lion", "--learning_rate", "1e-4"],
            ["--optimizer_type", "SGDNesterov", "--lr_scheduler", "cosine", "--lr_warmup_steps", "0.5"],
            [
                "--optimizer_type",
                "adafactor",
                "--optimizer_args",
                "scale_parameter=False",
                "relative_step=False",
                "warmup_init=False",
                "--lr_scheduler",
                "constant_with_warmup",
                "--lr_warmup_steps",
                "1",
            ],
            ["--use_8bit_adam"]
            if False
            else ["--optimizer_type", "torch.optim.Adam", "--optimizer_args", "betas=(0.9,0.99)"],
        ]
    ):
        trained(workspace, tmp_path / str(index), *extra)
    md = load_metadata(tmp_path / "3" / "last.safetensors")
    assert md["ss_optimizer"] == "torch.optim.adam.Adam(betas=(0.9, 0.99))"
    assert load_metadata(tmp_path / "1" / "last.safetensors")["ss_optimizer"] == "torch.optim.sgd.SGD(momentum=0.9)"


def test_noise_loss_and_text_options_are_used_and_recorded(workspace: Workspace, tmp_path: Path) -> None:
    tensors = trained(
        workspace,
        tmp_path,
        "--v_parameterization",
        "--min_snr_gamma",
        "5",
        "--noise_offset",
        "0.05",
        "--adaptive_noise_scale",
        "0.01",
        "--multires_noise_iterations",
        "2",
        "--ip_noise_gamma",
        "0.1",
        "--zero_terminal_snr",
        "--loss_type",
        "huber",
        "--huber_schedule",
        "exponential",
        "--clip_skip",
        "2",
        "--max_token_length",
        "150",
        "--min_timestep",
        "100",
        "--max_timestep",
        "900",
        "--shuffle_caption",
        "--caption_dropout_rate",
        "0.1",
        "--flip_aug",
    )
    assert all(torch.isfinite(t).all() for t in tensors.values())
    md = load_metadata(tmp_path / "last.safetensors")
    assert md["modelspec.prediction_type"] == "v" and md["ss_min_snr_gamma"] == "5.0"
    assert md["ss_noise_offset"] == "0.05" and md["ss_zero_terminal_snr"] == "True" and md["ss_loss_type"] == "huber"
    assert md["ss_clip_skip"] == "2" and md["ss_max_token_length"] == "150" and md["modelspec.encoder_layer"] == "2"
    assert md["ss_flip_aug"] == "True" and md["ss_shuffle_caption"] == "True"
