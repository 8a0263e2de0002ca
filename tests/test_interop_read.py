"""Adapters written by other tools' own code, read by every adapt command.

The files are made here with the writers' APIs: diffusers' ``save_lora_weights`` of a U-Net and
text encoder that PEFT adapted (``add_adapter``, as diffusers' training scripts do), PEFT's
``save_pretrained`` (a folder per component with ``adapter_config.json``, alpha and rank
patterns), and LyCORIS's kohya network (LoCon and LoHa, which also adapt ``conv_in``,
``conv_out`` and the time embedding). Merged weights are compared with the formula of each
method written out here, on every layer the file names.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import te_out, unet_inputs, unet_out
from PIL import Image

from adapt_cli.main import main
from adapters_core.api import load_networks
from adapters_core.models import build_tiny_model, load_sd_model, to_pipeline, write_tiny_model
from adapters_core.network import Network
from adapters_core.targets import layer_weight

peft = pytest.importorskip("peft")
lycoris_kohya = pytest.importorskip("lycoris.kohya")
from diffusers import StableDiffusionPipeline  # noqa: E402
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

TOKENS = torch.tensor([[0, 5, 17, 42, 1] + [1] * 72])
SD_CONTAINERS = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]


def kohya(component: str, path: str) -> str:
    path = path.removeprefix("base_model.model.")
    if component == "text_encoder" and not path.startswith("text_model."):
        path = f"text_model.{path}"
    return ("lora_unet_" if component == "unet" else "lora_te_") + path.replace(".", "_")


def lora_formula(down: torch.Tensor, up: torch.Tensor, scale: float, shape: torch.Size) -> torch.Tensor:
    """scale * up @ down, for Linear, 1x1 and kxk convs (up is 1x1: sum over the rank)."""
    down, up = down.double(), up.double().flatten(1)
    if len(shape) == 4:
        return (scale * torch.einsum("or,rikl->oikl", up, down.reshape(down.shape[0], shape[1], *shape[2:]))).float()
    return (scale * up @ down.flatten(1)).float()


def peft_deltas(component: str, root: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The delta of every PEFT LoRA layer of ``root`` (its own tensors and scaling)."""
    deltas = {}
    for path, layer in root.named_modules():
        if isinstance(layer, LoraLayer):
            base = layer_weight(layer.get_base_layer())
            deltas[kohya(component, path)] = lora_formula(
                layer_weight(layer.lora_A["default"]), layer_weight(layer.lora_B["default"]), layer.scaling["default"],
                base.shape
            ).detach()
    return deltas


def randomize_(module: torch.nn.Module, seed: int, names: tuple[str, ...]) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if any(part in name for part in names):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def lycoris_file(model, algo: str, path: Path, seed: int, **kwargs) -> dict[str, torch.Tensor]:
    """A LyCORIS file for the SD layer set (its default preset also lists other models' blocks,
    which duplicates a name on a diffusers U-Net); returns its state dict."""
    lycoris_kohya.PRESET["adapt-sd"] = {**lycoris_kohya.PRESET["full"], "unet_target_module": SD_CONTAINERS}
    unet, text_encoder = copy.deepcopy(model.unet), copy.deepcopy(model.text_encoder)
    network = lycoris_kohya.create_network(
        1.0, 4, 2, None, text_encoder, unet, algo=algo, conv_dim=3, conv_alpha=1, preset="adapt-sd", **kwargs
    )
    network.apply_to(text_encoder, unet, True, True)
    randomize_(network, seed, ("",))
    network.save_weights(str(path), torch.float32, None)
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


def lycoris_deltas(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """LoCon: alpha/r * up @ down; LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha/r."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, rest = key.partition(".")
        modules.setdefault(name.replace("lora_te_encoder_", "lora_te_text_model_encoder_"), {})[rest] = value
    deltas = {}
    for name, t in modules.items():
        shape = shapes[name]
        if "hada_w1_a" in t:
            rank = t["hada_w1_b"].shape[0]
            product = (t["hada_w1_a"].double() @ t["hada_w1_b"].double()) * (t["hada_w2_a"].double() @ t["hada_w2_b"].double())
            deltas[name] = (product * float(t["alpha"]) / rank).reshape(shape).float()
        else:
            rank = t["lora_down.weight"].shape[0]
            deltas[name] = lora_formula(t["lora_down.weight"], t["lora_up.weight"], float(t["alpha"]) / rank, shape)
    return deltas


def layer_weights(model) -> dict[str, torch.Tensor]:
    weights = {}
    for component, root in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        for path, module in root.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                weights[kohya(component, path)] = module.weight.detach().clone()
    return weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.set_num_threads(1)
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("interop_read")
    write_tiny_model(root / "model")
    model = build_tiny_model()
    shapes = {name: weight.shape for name, weight in layer_weights(model).items()}

    # diffusers' training scripts: PEFT adapters on the U-Net and text encoder, saved by the pipeline
    unet, text_encoder = copy.deepcopy(model.unet), copy.deepcopy(model.text_encoder)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "proj_in", "conv1", "time_emb_proj"]))
    text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    randomize_(unet, 1, ("lora_",))
    randomize_(text_encoder, 2, ("lora_",))
    StableDiffusionPipeline.save_lora_weights(
        root / "diffusers", unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder),
    )
    diffusers_deltas = {**peft_deltas("unet", unet), **peft_deltas("text_encoder", text_encoder)}

    # PEFT's own save_pretrained: a folder per component, alphas and ranks from adapter_config.json
    peft_unet = get_peft_model(copy.deepcopy(model.unet), LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "proj_out", "conv2"]))
    peft_te = get_peft_model(copy.deepcopy(model.text_encoder), LoraConfig(
        r=2, lora_alpha=6, alpha_pattern={"k_proj": 2}, rank_pattern={"fc1": 3}, target_modules=["q_proj", "k_proj", "fc1"]
    ))
    randomize_(peft_unet, 3, ("lora_",))
    randomize_(peft_te, 4, ("lora_",))
    peft_unet.save_pretrained(str(root / "peft" / "unet"))
    peft_te.save_pretrained(str(root / "peft" / "text_encoder"))
    peft_deltas_ = {**peft_deltas("unet", peft_unet), **peft_deltas("text_encoder", peft_te)}

    locon = lycoris_deltas(lycoris_file(model, "locon", root / "locon.safetensors", 5), shapes)
    loha = lycoris_deltas(lycoris_file(model, "loha", root / "loha.safetensors", 6), shapes)
    return SimpleNamespace(
        root=root, model_dir=root / "model", base=layer_weights(model),
        deltas={
            "diffusers": (root / "diffusers" / "pytorch_lora_weights.safetensors", diffusers_deltas),
            "diffusers-folder": (root / "diffusers", diffusers_deltas),
            "peft": (root / "peft", peft_deltas_),
            "locon": (root / "locon.safetensors", locon),
            "loha": (root / "loha.safetensors", loha),
        },
    )


def adapt(capsys, *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


KINDS = ("diffusers", "diffusers-folder", "peft", "locon", "loha")


def test_the_files_name_what_their_writers_adapted(files):
    # 6 transformer blocks (attn1/attn2 q, k, v, out; proj_in), 12 resnets (conv1, time_emb_proj), 2 TE layers
    assert len(files.deltas["diffusers"][1]) == 6 * 2 * 4 + 6 + 12 + 12 + 2 * 4
    assert len(files.deltas["peft"][1]) == 6 * 2 + 6 + 12 + 2 * 3
    assert len(files.deltas["locon"][1]) == 12 + 117 + 4  # LyCORIS adds conv_in, conv_out, time_embedding.linear_1/2
    assert {"lora_unet_conv_in", "lora_unet_time_embedding_linear_1"} <= set(files.deltas["loha"][1])


@pytest.mark.parametrize("kind", KINDS)
def test_merge_applies_every_named_layer_exactly(files, kind, capsys, tmp_path):
    path, deltas = files.deltas[kind]
    code, _, err = adapt(capsys, "merge", "--sd_model", files.model_dir, "--models", path, "--save_to", tmp_path / "merged")
    assert code == 0, err
    merged = layer_weights(load_sd_model(tmp_path / "merged", need_tokenizer=False))
    for name, weight in merged.items():
        want = files.base[name] + deltas[name] if name in deltas else files.base[name]
        assert (weight - want).abs().max() < 1e-5, name
    assert all((merged[name] - files.base[name]).abs().max() > 1e-4 for name in deltas)  # every named layer changed


@pytest.mark.parametrize("kind", KINDS)
def test_check_and_inspect_read_it(files, kind, capsys):
    path, deltas = files.deltas[kind]
    code, out, err = adapt(capsys, "check", path, "--model", files.model_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and len(report["modules"]) == len(deltas), err
    code, out, err = adapt(capsys, "inspect", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["modules"] == len(deltas)
    assert info["source_format"] == {"diffusers-folder": "diffusers", "locon": "kohya", "loha": "kohya"}.get(kind, kind)
    norms = {module["name"]: module["norm"] for module in info["module_list"]}
    for name, delta in deltas.items():
        assert norms[name] == pytest.approx(float(delta.detach().norm()), rel=1e-4), name


@pytest.mark.parametrize("kind", ("diffusers", "diffusers-folder", "peft"))
def test_reading_directly_equals_converting_first(files, kind, capsys, tmp_path):
    path, _ = files.deltas[kind]
    converted = tmp_path / "kohya.safetensors"
    assert adapt(capsys, "convert", path, converted, "--to", "kohya")[0] == 0
    assert close(merged_weights(path), merged_weights(converted))
    for command, extra in (("resize", ("--new_rank", 1)), ("svd-merge", ("--new_rank", 2))):
        outputs = []
        for source in (path, converted):
            out = tmp_path / f"{command}-{len(outputs)}.safetensors"
            flag = "--model" if command == "resize" else "--models"
            code, _, err = adapt(capsys, command, flag, source, *extra, "--save_to", out)
            assert code == 0, err
            outputs.append(merged_weights(out))
        assert close(*outputs)


def merged_weights(path: Path) -> dict[str, torch.Tensor]:
    model = build_tiny_model()
    Network.from_file(path, unet=model.unet, text_encoder=model.text_encoder).merge_to()
    return layer_weights(model)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)


@pytest.mark.parametrize("kind", ("diffusers", "peft", "locon"))
def test_python_api_and_generate_read_it(files, kind, capsys, tmp_path):
    path, deltas = files.deltas[kind]
    model = load_sd_model(files.model_dir)
    pipe = to_pipeline(model)
    (network,) = load_networks(pipe, [path], [0.7])
    assert len(list(network.adapter_modules())) == len(deltas)
    reference = load_sd_model(files.model_dir, need_tokenizer=False)
    with torch.no_grad():
        for component, root in (("unet", reference.unet), ("text_encoder", reference.text_encoder)):
            for layer_path, layer in root.named_modules():
                name = kohya(component, layer_path)
                if name in deltas:
                    layer.weight += 0.7 * deltas[name]
    inputs = unet_inputs(model)
    assert (unet_out(model, inputs) - unet_out(reference, inputs)).abs().max() < 1e-4
    assert (te_out(model, TOKENS) - te_out(reference, TOKENS)).abs().max() < 1e-4

    common = ("--prompt", "a cat", "--steps", 2, "--W", 32, "--H", 32, "--seed", 3, "--device", "cpu")
    code, _, err = adapt(capsys, "generate", "--model", files.model_dir, "--network_weights", path, *common,
                         "--outdir", tmp_path / "direct")
    assert code == 0, err
    if kind != "locon":
        converted = tmp_path / "kohya.safetensors"
        adapt(capsys, "convert", path, converted, "--to", "kohya")
        adapt(capsys, "generate", "--model", files.model_dir, "--network_weights", converted, *common,
              "--outdir", tmp_path / "converted")
        (a,), (b,) = sorted((tmp_path / "direct").glob("*.png")), sorted((tmp_path / "converted").glob("*.png"))
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize(
    ("algo", "kwargs", "feature"),
    [
        ("locon", {"use_tucker": True}, "Tucker decomposition (LoCon lora_mid)"),
        ("locon", {"dora_wd": True}, "DoRA weight decomposition"),
        ("loha", {"use_tucker": True}, "Tucker decomposition (LoHa hada_t1)"),
        ("lokr", {}, "LoKr (Kronecker product)"),
        ("ia3", {}, "IA3"),
        ("full", {}, "full weight difference"),
    ],
)
def test_features_no_type_implements_stop_every_command_with_one_line(files, algo, kwargs, feature, capsys, tmp_path):
    path = tmp_path / f"{algo}.safetensors"
    lycoris_file(build_tiny_model(), algo, path, 7, **kwargs)
    lines = set()
    for args in (
        ("check", path, "--model", files.model_dir),
        ("inspect", path),
        ("merge", "--sd_model", files.model_dir, "--models", path, "--save_to", tmp_path / "merged"),
        ("resize", "--model", path, "--new_rank", 1, "--save_to", tmp_path / "r.safetensors"),
    ):
        code, _, err = adapt(capsys, *args)
        (line,) = [line for line in err.splitlines() if line.startswith("adapt: error:")]
        assert code == 2 and feature in line and "nothing was applied" in line, err
        lines.add(line)
    assert len(lines) == 1  # check, reading and merging give the same verdict
    assert not (tmp_path / "merged").exists()


def test_a_key_naming_no_layer_stops_merge_unless_allowed(files, capsys, tmp_path):
    from adapters_core.formats import load_adapter, save_adapter

    source, deltas = files.deltas["locon"]
    tensors = dict(load_adapter(source).tensors)
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(2, 4)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(4, 2)
    stray = save_adapter(tmp_path / "stray.safetensors", tensors)
    code, _, err = adapt(capsys, "merge", "--sd_model", files.model_dir, "--models", stray, "--save_to", tmp_path / "m")
    assert code == 2 and "1 modules name no layer" in err and "lora_unet_no_such_layer" in err
    assert not (tmp_path / "m").exists()
    code, _, err = adapt(capsys, "merge", "--sd_model", files.model_dir, "--models", stray, "--save_to", tmp_path / "m",
                         "--allow_unmatched")
    assert code == 0 and "lora_unet_no_such_layer" in err  # listed, not silently dropped
    merged = layer_weights(load_sd_model(tmp_path / "m", need_tokenizer=False))
    assert all((merged[name] - files.base[name] - deltas[name]).abs().max() < 1e-5 for name in deltas)
