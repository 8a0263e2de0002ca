"""``adapt train`` as a user drives it: folders, toml files, both flag spellings, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from train_fixtures import Workspace, base_args, invoke_train, one_thread_fixture, run_adapt, workspace_fixture  # noqa: F401

from adapters_core.formats import load_adapter, load_metadata

TE_MODULES = 12  # tiny text encoder: 2 layers x (q, k, v, out, fc1, fc2)


def module_names(path: Path) -> set[str]:
    return {key.partition(".")[0] for key in load_adapter(path).tensors}


def test_folder_mode_with_reg_images_writes_kohya_file_and_metadata(
    workspace: Workspace, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    run = run_adapt(
        [
            "train",
            *base_args(workspace, out),
            "--reg_data_dir",
            str(workspace.reg_dir),
            "--prior_loss_weight",
            "0.5",
            "--training_comment",
            "hello",
        ],
        capsys,
    )
    assert run.code == 0, run.output
    assert "saved" in run.output
    path = out / "last.safetensors"
    loaded = load_adapter(path)
    names = {k.partition(".")[0] for k in loaded.tensors}
    assert sum(n.startswith("lora_te_text_model_encoder_layers_") for n in names) == TE_MODULES
    assert any(n.startswith("lora_unet_down_blocks_0_attentions_0_") for n in names)
    assert not any("resnets" in n for n in names)  # LierLa: no 3x3 convs
    assert all(key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for key in loaded.tensors)
    assert all(t.dtype == torch.float32 for t in loaded.tensors.values())
    md = loaded.metadata
    assert md["ss_network_module"] == "networks.lora"
    assert md["ss_network_dim"] == "None"  # not given, as kohya records it
    assert md["ss_network_alpha"] == "1"
    assert loaded.tensors[next(k for k in loaded.tensors if k.endswith(".lora_down.weight"))].shape[0] == 4
    assert md["ss_num_reg_images"] == "2"
    assert md["ss_prior_loss_weight"] == "0.5"
    assert json.loads(md["ss_reg_dataset_dirs"]) == {"1_shape": {"n_repeats": 1, "img_count": 2}}
    assert json.loads(md["ss_dataset_dirs"]) == {"10_sks shape": {"n_repeats": 10, "img_count": 4}}
    assert "sks shape" in json.loads(md["ss_tag_frequency"])["10_sks shape"]
    assert md["ss_steps"] == "2" and md["ss_epoch"] == "1" and md["ss_seed"] == "42"
    assert md["ss_training_comment"] == "hello"
    assert md["ss_sd_model_name"] == "model" and "ss_sd_model_hash" not in md  # a folder: no file hash
    assert float(md["ss_training_finished_at"]) >= float(md["ss_training_started_at"])
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_v2"] == "False"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert md["modelspec.resolution"] == "32x32"
    assert md["sshs_model_hash"] and md["ss_session_id"]
    assert "ss_network_args" not in md


def test_kohya_and_dashed_spellings_and_seed_determinism(workspace: Workspace, tmp_path: Path) -> None:
    kohya = base_args(workspace, tmp_path / "a", "--network_dim", "2", "--network_alpha", "2")
    dashed = [a.replace("_", "-") if a.startswith("--") else a for a in kohya]
    dashed[dashed.index("--output-dir") + 1] = str(tmp_path / "b")
    assert run_adapt(["train", *kohya]).code == 0
    assert run_adapt(["train", *dashed]).code == 0
    a, b = load_adapter(tmp_path / "a" / "last.safetensors"), load_adapter(tmp_path / "b" / "last.safetensors")
    assert a.metadata["ss_network_dim"] == "2"
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    other = base_args(workspace, tmp_path / "c", "--network_dim", "2", "--network_alpha", "2")
    other[other.index("--seed") + 1] = "7"
    assert run_adapt(["train", *other]).code == 0
    c = load_adapter(tmp_path / "c" / "last.safetensors")
    assert any(not torch.equal(a.tensors[k], c.tensors[k]) for k in a.tensors if k.endswith("lora_up.weight"))


def test_dataset_config_toml_and_network_args(workspace: Workspace, tmp_path: Path) -> None:
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "[general]\ncaption_extension = '.txt'\nshuffle_caption = true\n"
        "[[datasets]]\nresolution = 32\nbatch_size = 2\n"
        f"[[datasets.subsets]]\nimage_dir = '{workspace.train_dir / '10_sks shape'}'\nnum_repeats = 2\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    argv = [
        "train",
        "--pretrained_model_name_or_path",
        str(workspace.model),
        "--dataset_config",
        str(toml),
        "--output_dir",
        str(out),
        "--output_name",
        "toml",
        "--max_train_steps",
        "2",
        "--seed",
        "1",
        "--max_data_loader_n_workers",
        "0",
        "--network_args",
        "conv_dim=2",
        "conv_alpha=1",
    ]
    assert run_adapt(argv).code == 0
    md = load_metadata(out / "toml.safetensors")
    datasets = json.loads(md["ss_datasets"])
    assert datasets[0]["batch_size_per_device"] == 2 and datasets[0]["subsets"][0]["num_repeats"] == 2
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1"}
    assert md["ss_num_batches_per_epoch"] == "4"
    assert any("resnets_0_conv1" in n for n in module_names(out / "toml.safetensors"))


def test_config_file_with_tables_and_command_line_override(workspace: Workspace, tmp_path: Path, capsys) -> None:
    config = tmp_path / "args.toml"
    config.write_text(
        "[model]\n"
        f"pretrained_model_name_or_path = '{workspace.model}'\n"
        "[dataset]\n"
        f"train_data_dir = '{workspace.train_dir}'\ncaption_extension = '.txt'\nresolution = '32'\n"
        "[training]\n"
        "max_train_steps = 3\nlearning_rate = 1e-3\nseed = 3\nmax_data_loader_n_workers = 0\n"
        "network_dim = 2\noutput_name = 'from_file'\nnetwork_args = ['dropout=0.1']\nlowram = false\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    run = run_adapt(
        ["train", "--config_file", str(config.with_suffix("")), "--output-dir", str(out), "--output_name", "from_cli"],
        capsys,
    )
    assert run.code == 0, run.output
    md = load_metadata(out / "from_cli.safetensors")
    assert md["ss_steps"] == "3" and md["ss_network_dim"] == "2" and md["ss_seed"] == "3"
    assert json.loads(md["ss_network_args"]) == {"dropout": "0.1"}
    config.write_text(config.read_text() + "netwrok_alpha = 2\n", encoding="utf-8")
    bad = run_adapt(["train", "--config_file", str(config), "--output_dir", str(out)], capsys)
    assert bad.code == 2
    assert "unknown argument 'netwrok_alpha'; did you mean 'network_alpha'?" in bad.output


def test_output_config_round_trip(workspace: Workspace, tmp_path: Path) -> None:
    config = tmp_path / "saved.toml"
    argv = base_args(workspace, tmp_path / "out", "--network_args", "conv_dim=2", "--text_encoder_lr", "5e-5")
    result = invoke_train([*argv, "--config_file", str(config), "--output_config"])
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert 'network_args = ["conv_dim=2"]' in text and "text_encoder_lr = [5e-05]" in text
    from adapters_core.train.config_file import load_config_file

    values = load_config_file(str(config))
    assert values["network_args"] == ("conv_dim=2",) and values["max_train_steps"] == 2


def test_unsupported_and_unknown_network_errors(workspace: Workspace, tmp_path: Path, capsys) -> None:
    run = run_adapt(["train", *base_args(workspace, tmp_path), "--deepspeed"], capsys)
    assert run.code == 2 and "--deepspeed is a kohya option adapt does not support" in run.output
    run = run_adapt(["train", *base_args(workspace, tmp_path), "--network", "loka"], capsys)
    assert run.code == 2
    assert "unknown network type 'loka'; installed types: c3lier, dylora, loha, lora" in run.output
    run = run_adapt(["train", *base_args(workspace, tmp_path), "--network_module", "networks.lycoris_x"], capsys)
    assert run.code == 2 and "installed types" in run.output


def test_network_module_kohya_names_and_single_file_model(workspace: Workspace, tmp_path: Path) -> None:
    argv = base_args(workspace, tmp_path / "out", "--network_module", "networks.lora")
    argv[argv.index("--pretrained_model_name_or_path") + 1] = str(workspace.single_file)
    assert run_adapt(["train", *argv]).code == 0
    path = tmp_path / "out" / "last.safetensors"
    assert not any("resnets" in n for n in module_names(path))  # networks.lora = LierLa, not C3Lier
    md = load_metadata(path)
    assert md["ss_sd_model_name"] == "tiny.safetensors"
    assert len(md["ss_new_sd_model_hash"]) == 64 and len(md["ss_sd_model_hash"]) == 8
