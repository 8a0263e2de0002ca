"""SDXL files adapt writes or converts, loaded by diffusers' ``StableDiffusionXLPipeline.load_lora_weights``.

Every module of the file must land on a layer (the pipeline's PEFT LoRA layers are exactly the
file's modules, and neither diffusers nor PEFT logs a warning), and the U-Net and both text
encoders must give adapt's patched outputs to 1e-4. ``adapt convert`` turns the same files into
diffusers and PEFT format and back to kohya's SDXL names (LDM-style U-Net names, ``lora_te1_``/
``lora_te2_``) unchanged.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import randomize
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from adapt_cli.main import main
from adapt_sdxl.tiny import build_tiny_sdxl_model, write_tiny_sdxl_model
from adapters_core.errors import AdaptError
from adapters_core.interop.adapter_source import read_lora
from adapters_core.models import build_tiny_model
from adapters_core.network import Network

from diffusers import StableDiffusionXLPipeline  # isort: skip

TOLERANCE = 1e-4
TOKENS = torch.tensor([[0, 5, 17, 42, 1] + [1] * 72])
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
NETWORKS = {
    "lierla": {"network_dim": 4, "network_alpha": 2},
    "c3lier": {"network_dim": 4, "network_alpha": 2, "conv_dim": 3, "conv_alpha": 1},
}


def outputs(parts: Any) -> dict[str, torch.Tensor]:
    """U-Net noise prediction and both encoders' last hidden states (and the second's projection)."""
    unet = parts.unet
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    pooled = torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                         generator=generator)
    time_ids = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]])
    with torch.no_grad():
        second = parts.text_encoder_2(TOKENS)
        return {
            "unet": unet(sample, torch.tensor([500]), context,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample,
            "text_encoder": parts.text_encoder(TOKENS).last_hidden_state,
            "text_encoder_2": second.last_hidden_state,
            "text_embeds": second.text_embeds,
        }


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for part, value in want.items():
        difference = (got[part] - value).abs().max().item()
        assert difference < TOLERANCE, f"{part}: {difference}"


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny SDXL Diffusers folder, LierLa and C3Lier files on it (random up and down
    weights) and adapt's patched outputs of each."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sdxl_interop")
    write_tiny_sdxl_model(root / "model", seed=0)
    files, patched, layers = {}, {}, {}
    for seed, (network, options) in enumerate(NETWORKS.items()):
        model = build_tiny_sdxl_model(seed=0)
        net = randomize(Network.create("lora", model=model, options=options), seed=seed, std=0.2)
        files[network] = root / f"{network}.safetensors"
        net.save(files[network])
        layers[network] = {f"{net.targets[name].component}.{net.targets[name].module_path}"
                           for name, _ in net.adapter_modules()}
        patched[network] = outputs(SimpleNamespace(**model.components) if net.apply() else None)
    base = outputs(SimpleNamespace(**build_tiny_sdxl_model(seed=0).components))
    return SimpleNamespace(root=root, folder=root / "model", files=files, patched=patched, layers=layers, base=base)


@pytest.fixture(scope="module")
def pipeline(sdxl: SimpleNamespace) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(sdxl.folder, local_files_only=True)


def loaded_in_diffusers(pipeline: StableDiffusionXLPipeline, path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    """A copy of the pipeline with ``path`` loaded by ``load_lora_weights`` (scale 1), and the
    paths of the layers it adapted; nothing diffusers or PEFT logs as a warning."""
    pipe = copy.deepcopy(pipeline)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    adapted = {f"{component}.{layer_path}" for component in ("unet", *TEXT_ENCODERS)
               for layer_path, layer in getattr(pipe, component).named_modules() if isinstance(layer, LoraLayer)}
    return pipe, adapted


@pytest.mark.parametrize("network", list(NETWORKS))
def test_diffusers_loads_adapts_sdxl_file_with_every_module(sdxl, pipeline, network, caplog) -> None:
    pipe, adapted = loaded_in_diffusers(pipeline, sdxl.files[network], caplog)
    assert adapted == sdxl.layers[network]  # every module of the file landed, on its own layer
    assert {name.split(".")[0] for name in adapted} == {"unet", *TEXT_ENCODERS}
    assert_same(outputs(pipe), sdxl.patched[network])
    for part in ("unet", *TEXT_ENCODERS):
        assert (sdxl.patched[network][part] - sdxl.base[part]).abs().max() > 1e-2  # the adapter changes each part


def convert(*args: str | Path) -> None:
    assert main(["convert", *(str(arg) for arg in args)]) == 0


@pytest.mark.parametrize("network", list(NETWORKS))
def test_converted_to_diffusers_loads_in_diffusers_with_the_same_outputs(sdxl, pipeline, network, tmp_path, caplog):
    with_model, named = tmp_path / "with_model.safetensors", tmp_path / "named.safetensors"
    convert(sdxl.files[network], with_model, "--to", "diffusers", "--model", sdxl.folder)
    convert(sdxl.files[network], named, "--to", "diffusers")  # names only: the SDXL family from the file's names
    keys = set(load_file(str(with_model)))
    assert keys == set(load_file(str(named)))
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert len(keys) == 2 * len(sdxl.layers[network])
    comfyui = tmp_path / "comfyui.safetensors"  # the older attention-processor keys
    convert(sdxl.files[network], comfyui, "--to", "diffusers", "--layout", "comfyui")
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight" in set(
        load_file(str(comfyui)))
    for path in (with_model, comfyui):
        pipe, adapted = loaded_in_diffusers(pipeline, path, caplog)
        assert adapted == sdxl.layers[network]
        assert_same(outputs(pipe), sdxl.patched[network])


def test_diffusers_own_sdxl_save_reads_back_into_kohyas_names(sdxl, pipeline, tmp_path, caplog) -> None:
    """diffusers loads adapt's file and saves it with ``save_lora_weights`` (its own key names,
    ``text_encoder_2.`` included, the scales in its LoRA configs); ``adapt convert --to kohya``
    gives the original modules back."""
    pipe, _ = loaded_in_diffusers(pipeline, sdxl.files["c3lier"], caplog)
    saved: dict[str, Any] = {}
    for part in ("unet", *TEXT_ENCODERS):
        saved[f"{part}_lora_layers"] = get_peft_model_state_dict(getattr(pipe, part), adapter_name="default_0")
        saved[f"{part}_lora_adapter_metadata"] = getattr(pipe, part).peft_config["default_0"].to_dict()
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "saved", **saved)
    convert(tmp_path / "saved", tmp_path / "kohya.safetensors", "--to", "kohya")
    assert load_file(str(tmp_path / "kohya.safetensors")).keys() == load_file(str(sdxl.files["c3lier"])).keys()
    want, got = deltas(sdxl.files["c3lier"]), deltas(tmp_path / "kohya.safetensors")
    assert all(torch.allclose(got[name], want[name], atol=1e-6) for name in want)


def deltas(path: Path) -> dict[str, torch.Tensor]:
    lora = read_lora(path)
    return {name: lora.scale(name) * (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1))
            for name, t in lora.modules.items()}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_diffusers_and_peft_read_back_into_kohyas_sdxl_names(sdxl, network, tmp_path) -> None:
    original = load_file(str(sdxl.files[network]))
    convert(sdxl.files[network], tmp_path / "peft", "--to", "peft", "--model", sdxl.folder)
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["text_encoder", "text_encoder_2", "unet"]
    convert(tmp_path / "peft", tmp_path / "from_peft.safetensors", "--to", "kohya")
    from_peft = load_file(str(tmp_path / "from_peft.safetensors"))
    assert from_peft.keys() == original.keys()  # PEFT keeps alphas: the same tensors
    assert all(torch.equal(from_peft[key], original[key]) for key in original)

    convert(sdxl.files[network], tmp_path / "diffusers.safetensors", "--to", "diffusers")
    convert(tmp_path / "diffusers.safetensors", tmp_path / "from_diffusers.safetensors", "--to", "kohya")
    assert load_file(str(tmp_path / "from_diffusers.safetensors")).keys() == original.keys()
    want, got = deltas(sdxl.files[network]), deltas(tmp_path / "from_diffusers.safetensors")
    assert all(torch.allclose(got[name], want[name], atol=1e-6) for name in want)  # alpha/rank folded into up


@pytest.fixture(scope="module")
def sd_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_tiny_model()
    net = randomize(Network.create("lora", unet=model.unet, text_encoder=model.text_encoder), std=0.1)
    path = tmp_path_factory.mktemp("sd_lora") / "sd.safetensors"
    net.save(path)
    return path


def test_sd_lora_against_an_sdxl_model_is_one_line(sdxl, sd_lora, tmp_path, capsys) -> None:
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(sd_lora), str(out), "--to", "diffusers", "--model", str(sdxl.folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora_te_" in err and "SDXL has two text encoders" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(AdaptError, match=f"{sd_lora}: .*another base model") as info:  # applied: refused too
        Network.from_file(sd_lora, model=build_tiny_sdxl_model())
    assert "\n" not in str(info.value)
