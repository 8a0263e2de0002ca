"""Single-file checkpoints: write, read back, template carry-over, pickles, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from adapters_core.errors import FormatError, ModelLoadError, OutputExistsError
from adapters_core.models import SDModel, load_sd_model, read_checkpoint, save_single_file
from adapters_core.models.ldm_layout import TE_V1_PREFIX, TE_V2_PREFIX, text_encoder_from_ldm

SameState = Callable[[torch.nn.Module, torch.nn.Module], None]


def test_safetensors_round_trip_is_bitwise(
    tiny: SDModel, tmp_path: Path, assert_same_state: SameState
) -> None:
    path = save_single_file(tiny, tmp_path / "m.safetensors", metadata={"ss_note": "x"})
    tensors, metadata = read_checkpoint(path)
    assert metadata["ss_note"] == "x"
    assert tensors[TE_V1_PREFIX + "text_model.embeddings.position_ids"].dtype == torch.int64
    loaded = load_sd_model(path)
    for name in ("unet", "text_encoder", "vae"):
        assert_same_state(getattr(tiny, name), getattr(loaded, name))
    assert loaded.base_model_version == "sd_v1" and loaded.tokenizer is not None


def test_ckpt_is_a_weights_only_pickle(tiny: SDModel, tmp_path: Path, assert_same_state: SameState) -> None:
    path = save_single_file(tiny, tmp_path / "m.ckpt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict"}
    assert_same_state(tiny.unet, load_sd_model(path).unet)


def test_ckpt_with_extra_entries_and_refused_pickle(tiny: SDModel, tmp_path: Path) -> None:
    tensors, _ = read_checkpoint(save_single_file(tiny, tmp_path / "m.safetensors"))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": tensors, "global_step": 10}, good)
    assert read_checkpoint(good)[0].keys() == tensors.keys()
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": tensors, "callback": Path("x")}, bad)  # not allowed with weights_only
    with pytest.raises(FormatError, match="bad.ckpt: cannot be loaded with torch.load"):
        read_checkpoint(bad)


def test_template_carries_extra_keys_and_shapes(tiny: SDModel, tmp_path: Path) -> None:
    template = tmp_path / "source.safetensors"
    tensors, _ = read_checkpoint(save_single_file(tiny, tmp_path / "plain.safetensors"))
    proj = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    tensors[proj] = tensors[proj].reshape(tensors[proj].shape[:2])  # an SD2-style Linear proj_in
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    tensors["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    save_file(tensors, template)

    out = save_single_file(tiny, tmp_path / "out.safetensors", template=template, dtype=torch.float16)
    written = load_file(out)
    assert written.keys() == tensors.keys()
    assert written[proj].shape == tensors[proj].shape
    assert written["model_ema.decay"].dtype == torch.float16
    assert written[TE_V1_PREFIX + "text_model.embeddings.position_ids"].dtype == torch.int64

    ckpt_template = tmp_path / "source.ckpt"
    torch.save({"state_dict": tensors}, ckpt_template)
    out_ckpt = save_single_file(tiny, tmp_path / "out.ckpt", template=ckpt_template)
    assert torch.load(out_ckpt, weights_only=True)["state_dict"].keys() == tensors.keys()


def test_template_of_another_model_is_refused(tiny: SDModel, tmp_path: Path) -> None:
    template = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(7), "model_ema.x": torch.zeros(1)}, template)
    with pytest.raises(FormatError, match="out.2.bias has shape"):
        save_single_file(tiny, tmp_path / "x.safetensors", template=template)
    assert not (tmp_path / "x.safetensors").exists()


def test_component_dict_input_and_overwrite(tiny: SDModel, tmp_path: Path) -> None:
    path = tmp_path / "unet_only.safetensors"
    save_single_file({"unet": tiny.unet.state_dict()}, path)
    with safe_open(path, "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("model.diffusion_model.") for k in keys)
    with pytest.raises(OutputExistsError):
        save_single_file({"unet": tiny.unet.state_dict()}, path)
    save_single_file({"vae": tiny.vae.state_dict()}, path, overwrite=True)
    with pytest.raises(FormatError, match="expected keys among unet, text_encoder, vae"):
        save_single_file({"transformer": {}}, tmp_path / "y.safetensors")


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nope.safetensors: no such file"):
        read_checkpoint(tmp_path / "nope.safetensors")
    weird = tmp_path / "model.onnx"
    weird.write_bytes(b"x")
    with pytest.raises(FormatError, match="unknown checkpoint format '.onnx'"):
        read_checkpoint(weird)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(FormatError, match="broken.safetensors: not a readable safetensors file"):
        read_checkpoint(broken)


def test_diffusers_reads_our_single_file(tiny_files: dict[str, Path], tiny: SDModel) -> None:
    pipe = StableDiffusionPipeline.from_single_file(
        str(tiny_files["single"]), config=str(tiny_files["diffusers"]), local_files_only=True, safety_checker=None
    )
    for name in ("unet", "text_encoder", "vae"):
        ours, theirs = getattr(tiny, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_v2_text_encoder_takes_dropped_layer_from_template(tmp_path: Path) -> None:
    torch.manual_seed(5)
    config: dict[str, Any] = {"vocab_size": 194, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
              "max_position_embeddings": 77, "hidden_act": "gelu"}
    full = CLIPTextModel(CLIPTextConfig(**config, num_hidden_layers=3))
    source = tmp_path / "v2.safetensors"
    save_single_file({"text_encoder": full.state_dict()}, source, v2=True)
    tensors = load_file(source)
    tensors[TE_V2_PREFIX + "text_projection"] = torch.randn(32, 32)
    tensors[TE_V2_PREFIX + "logit_scale"] = torch.tensor(4.6)
    save_file(tensors, source, metadata={"format": "pt"})

    penultimate = CLIPTextModel(CLIPTextConfig(**config, num_hidden_layers=2))
    penultimate.load_state_dict(text_encoder_from_ldm(tensors, v2=True, num_layers=2))
    out = save_single_file({"text_encoder": penultimate.state_dict()}, tmp_path / "o.safetensors",
                           v2=True, template=source)
    written = load_file(out)
    assert written.keys() == tensors.keys()
    assert all(torch.equal(written[k], tensors[k]) for k in tensors)
