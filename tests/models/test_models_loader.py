"""load_sd_model: Diffusers folders and single files give the same model; clear errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from adapt_sd.detection import detect_architecture
from adapters_core.errors import ModelLoadError
from adapters_core.models import SDModel, load_sd_model, save_single_file

SameState = Callable[[torch.nn.Module, torch.nn.Module], None]


def _outputs(model: SDModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    assert model.tokenizer is not None
    ids = model.tokenizer(["a photo of sks dog"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model.text_encoder(ids).last_hidden_state
        noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        eps = model.unet(noise, 500, encoder_hidden_states=hidden).sample
        image = model.vae.decode(noise).sample
    return hidden, eps, image


def test_diffusers_and_single_file_give_identical_outputs(tiny_files: dict[str, Path], tiny: SDModel) -> None:
    from_folder = load_sd_model(tiny_files["diffusers"])
    from_file = load_sd_model(tiny_files["single"])
    assert from_folder.family.name == from_file.family.name == "tiny"
    assert from_folder.noise_scheduler_config["prediction_type"] == "epsilon"
    reference = _outputs(tiny)
    for model in (from_folder, from_file):
        for got, want in zip(_outputs(model), reference):
            assert torch.equal(got, want)
    assert from_file.tokenizer is not None
    prompt = "a photo of sks dog"
    assert from_file.tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids


def test_diffusers_to_ldm_to_diffusers_round_trip(
    tiny_files: dict[str, Path], tmp_path: Path, assert_same_state: SameState
) -> None:
    original = load_sd_model(tiny_files["diffusers"])
    path = save_single_file(original, tmp_path / "m.safetensors")
    again = load_sd_model(path)
    for name in ("unet", "text_encoder", "vae"):
        assert_same_state(getattr(original, name), getattr(again, name))


def test_dtype_device_and_flags(tiny_files: dict[str, Path]) -> None:
    model = load_sd_model(tiny_files["single"], dtype=torch.float16, v_parameterization=True)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.float16}
    assert model.text_encoder.embeddings.position_ids.device.type == "cpu"
    assert model.noise_scheduler_config["prediction_type"] == "v_prediction"
    folder = load_sd_model(tiny_files["diffusers"], dtype=torch.bfloat16)
    assert next(folder.unet.parameters()).dtype == torch.bfloat16


def test_v2_flag_that_contradicts_the_file(tiny_files: dict[str, Path]) -> None:
    for path in tiny_files.values():
        with pytest.raises(ModelLoadError, match="model family sd2 was given but this is a tiny model"):
            load_sd_model(path, family="sd2")


def test_missing_path_and_non_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nothing\.safetensors: no such file or folder"):
        load_sd_model(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_sd_model(tmp_path)


def test_tokenizer_sources(
    tiny_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_files["diffusers"], folder)
    shutil.rmtree(folder / "tokenizer")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ModelLoadError, match="no tokenizer found locally .*pass tokenizer_path"):
        load_sd_model(folder)
    assert load_sd_model(folder, need_tokenizer=False).tokenizer is None
    model = load_sd_model(folder, tokenizer_path=tiny_files["diffusers"])  # a Diffusers folder
    assert model.tokenizer is not None and model.tokenizer.model_max_length == 77
    with pytest.raises(ModelLoadError, match="no CLIP tokenizer there"):
        load_sd_model(folder, tokenizer_path=tmp_path)


def test_detect_architecture_from_shapes(tmp_path: Path) -> None:
    def fake(context: int, te_prefix: str, channels: int = 320) -> dict[str, torch.Tensor]:
        unet = "model.diffusion_model."
        return {
            f"{unet}input_blocks.0.0.weight": torch.empty(channels, 4, 3, 3),
            f"{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.empty(320, context),
            te_prefix + "x": torch.empty(1),
        }

    where = tmp_path / "f.safetensors"
    assert detect_architecture(fake(768, "cond_stage_model.transformer."), where) == "sd_v1"
    assert detect_architecture(fake(1024, "cond_stage_model.model."), where) == "sd_v2"
    with pytest.raises(ModelLoadError, match="context size 768"):
        detect_architecture(fake(768, "cond_stage_model.model."), where)
    with pytest.raises(ModelLoadError, match="expected 320"):
        detect_architecture(fake(768, "cond_stage_model.transformer.", channels=640), where)
    with pytest.raises(ModelLoadError, match="an SDXL checkpoint: the sdxl model family reads it"):
        detect_architecture({"conditioner.embedders.0.x": torch.empty(1)}, where)
