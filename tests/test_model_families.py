"""Model families are plugins: the project's own SD families come through the ``adapt.models``
entry-point group, and a third-party family (tests/fake_families.py: the tiny model with a
second text encoder) works with the Python API, ``train``, ``merge``, ``check`` and
``generate`` with no edit to the core."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_families import TE_WIDTH, build_tiny_dual_model
from PIL import Image
from safetensors.torch import load_file
from train_fixtures import run_adapt

from adapt_cli.main import main
from adapters_core import plugins
from adapters_core.errors import PluginError
from adapters_core.formats import load_adapter
from adapters_core.models import load_sd_model, save_diffusers
from adapters_core.network import Network
from adapters_core.targets import layer_weight
from adapters_core.train.dataset import write_demo_dataset


@pytest.fixture(name="dual")
def dual_fixture(fake_entry_points):
    return fake_entry_points({"tinydual": "fake_families:tinydual"}, group=plugins.MODELS_ENTRY_POINT_GROUP)


@pytest.fixture(scope="module", name="dual_files")
def dual_files_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dual")
    save_diffusers(build_tiny_dual_model(seed=0), root / "model")
    data = write_demo_dataset(root / "data", n_images=2, size=32, seed=0)
    return {"model": root / "model", "data": data, "root": root}


def test_own_families_come_through_the_entry_point_group() -> None:
    registry = plugins.get_registry()
    assert list(registry.families)[:3] == ["sd1", "sd2", "tiny"]
    origin = registry.family_origins["sd1"]
    assert origin.entry_point == "sd" and origin.distribution == "adapt"
    assert [part.kohya_prefix for part in registry.family("sd2").components] == ["lora_te", "lora_unet"]
    assert registry.family("sd2").kohya_v2 and not registry.family("sd1").kohya_v2


def test_a_second_family_of_the_same_name_is_one_line(fake_entry_points) -> None:
    with pytest.raises(PluginError, match="model family 'tiny' is registered twice") as info:
        fake_entry_points({"again": "fake_families:second_tiny"}, group=plugins.MODELS_ENTRY_POINT_GROUP)
    assert "\n" not in str(info.value)


def test_networks_lists_the_families(dual, capsys) -> None:
    assert main(["networks"]) == 0
    out = capsys.readouterr().out
    assert "tinydual  [adapt-test-plugins 9.9]" in out
    assert "components: text_encoder (lora_te1_), text_encoder_2 (lora_te2_), unet (lora_unet_)" in out


def test_network_create_names_both_text_encoders(dual) -> None:
    model = build_tiny_dual_model()
    net = Network.create("lora", model=model, options={"network_dim": 2})
    names = [name for name, _ in net.adapter_modules()]
    te1 = [n for n in names if n.startswith("lora_te1_text_model_")]
    te2 = [n for n in names if n.startswith("lora_te2_text_model_")]
    unet = [n for n in names if n.startswith("lora_unet_")]
    assert len(te1) == len(te2) > 0 and len(te1) + len(te2) + len(unet) == len(names)
    assert net.family.name == "tinydual"
    # the second encoder's modules adapt the second encoder's layers
    layer = model.components["text_encoder_2"].get_submodule(net.targets[te2[0]].module_path)
    assert net.targets[te2[0]].layer is layer


def test_train_merge_check_generate_on_a_third_party_family(dual, dual_files, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    run = run_adapt([
        "train", "--pretrained_model_name_or_path", str(dual_files["model"]),
        "--train_data_dir", str(dual_files["data"]), "--caption_extension", ".txt", "--resolution", "32",
        "--output_dir", str(out), "--max_train_steps", "3", "--learning_rate", "1e-2", "--seed", "1",
        "--network_dim", "2", "--max_data_loader_n_workers", "0", "--no_report_images",
    ], capsys)
    assert run.code == 0, run.output
    adapter = load_adapter(out / "last.safetensors")
    modules = {key.partition(".")[0] for key in adapter.tensors}
    assert any(m.startswith("lora_te1_") for m in modules) and any(m.startswith("lora_te2_") for m in modules)
    assert adapter.metadata["ss_base_model_version"] == "tinydual"
    assert adapter.metadata["modelspec.architecture"] == "tiny-dual/lora"
    te2_up = [key for key in adapter.tensors if key.startswith("lora_te2_") and key.endswith("lora_up.weight")]
    assert any(adapter.tensors[key].abs().sum() > 0 for key in te2_up)  # the second encoder trained

    # check: every module matches a layer of the folder's model
    assert main(["check", str(out / "last.safetensors"), "--model", str(dual_files["model"])]) == 0
    capsys.readouterr()

    # merge into the Diffusers folder: W' = W + (alpha/rank) up @ down for a second-encoder layer
    merged_folder = tmp_path / "merged"
    assert main([
        "merge", "--sd_model", str(dual_files["model"]), "--models", str(out / "last.safetensors"),
        "--save_to", str(merged_folder),
    ]) == 0
    capsys.readouterr()
    name = te2_up[0].removesuffix(".lora_up.weight")
    base, merged = load_sd_model(dual_files["model"]), load_sd_model(merged_folder)
    assert merged.family.name == "tinydual"
    net = Network.from_file(out / "last.safetensors", model=base)
    path = net.targets[name].module_path
    up, down = adapter.tensors[f"{name}.lora_up.weight"], adapter.tensors[f"{name}.lora_down.weight"]
    alpha = float(adapter.tensors[f"{name}.alpha"])
    expected = layer_weight(base.components["text_encoder_2"].get_submodule(path)) + alpha / up.shape[1] * up @ down
    actual = layer_weight(merged.components["text_encoder_2"].get_submodule(path))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    saved = load_file(merged_folder / "text_encoder_2" / "model.safetensors")
    assert any(torch.equal(tensor, actual) for tensor in saved.values())

    # generate: the adapter applied equals the merged model's image
    images = {}
    for label, model, extra in (
        ("patched", dual_files["model"], ["--network_weights", str(out / "last.safetensors")]),
        ("merged", merged_folder, []),
    ):
        folder = tmp_path / f"images_{label}"
        assert main([
            "generate", "--model", str(model), *extra, "--prompt", "a sks shape", "--W", "32", "--H", "32",
            "--steps", "2", "--seed", "3", "--outdir", str(folder),
        ]) == 0, capsys.readouterr().err
        (png,) = folder.glob("*.png")
        images[label] = torch.tensor(list(Image.open(png).getdata()), dtype=torch.float32)
    assert images["patched"].std() > 0
    assert (images["patched"] - images["merged"]).abs().max() <= 2  # same picture up to rounding


def test_an_sd_lora_on_the_two_encoder_family_is_refused(dual, dual_files, tmp_path, capsys) -> None:
    """One line, nothing written; ``check`` says why each text-encoder key loads nowhere."""
    from adapters_core.models import build_tiny_model

    sd_net = Network.create("lora", model=build_tiny_model(), options={"network_dim": 2})
    sd_net.save(tmp_path / "sd.safetensors")
    code = main(["generate", "--model", str(dual_files["model"]), "--network_weights", str(tmp_path / "sd.safetensors"),
                 "--prompt", "x", "--W", "32", "--H", "32", "--steps", "1", "--outdir", str(tmp_path / "img")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "sd.safetensors" in err and "another base model" in err and "\n" not in err
    assert not (tmp_path / "img").exists()
    assert main(["check", str(tmp_path / "sd.safetensors"), "--model", str(dual_files["model"])]) == 1
    assert "one-encoder module (lora_te_)" in capsys.readouterr().out


def test_conditioning_is_both_encoders_side_by_side(dual) -> None:
    model = build_tiny_dual_model()
    outputs = model.family.encode_text(model.components, model.tokenizers, ["a cat"], max_token_length=None,
                                       clip_skip=None)
    (states,) = outputs.values()
    assert states.shape[-1] == 2 * TE_WIDTH
    first = model.components["text_encoder"](model.tokenizers["text_encoder"](
        ["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(states[..., :TE_WIDTH], first)
