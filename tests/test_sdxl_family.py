"""SDXL as a model-family plugin (package adapt_sdxl): kohya's module set and names on an
SDXL-sized model, its block layout, loading a Diffusers folder and an SGM single file, and
``check``/``inspect`` on an SDXL LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import randomize
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapt_cli.main import main
from adapt_sdxl.blocks import sdxl_block_index
from adapt_sdxl.tiny import build_tiny_sdxl_model, write_tiny_sdxl_model
from adapters_core.errors import BlockSpecError, ConfigError, ModelLoadError
from adapters_core.formats import load_adapter, save_adapter
from adapters_core.models import load_sd_model
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.train.dataset import write_demo_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("sdxl")
    write_tiny_sdxl_model(root / "model", seed=0, single_file=root / "tiny_sdxl.safetensors")
    return SimpleNamespace(root=root, folder=root / "model", single=root / "tiny_sdxl.safetensors")


def train_tiny(tiny: SimpleNamespace, tmp_path: Path, capsys, *extra: str) -> Path:
    """``adapt train`` for 2 steps on the tiny SDXL folder; the output folder."""
    data = write_demo_dataset(tmp_path / "data", n_images=2, size=32, seed=0)
    out = tmp_path / "out"
    assert main([
        "train", "--pretrained_model_name_or_path", str(tiny.folder), "--train_data_dir", str(data),
        "--caption_extension", ".txt", "--resolution", "32", "--output_dir", str(out), "--max_train_steps", "2",
        "--learning_rate", "1e-2", "--seed", "1", "--network_dim", "2", "--max_data_loader_n_workers", "0",
        "--no_report_images", *extra,
    ]) == 0, capsys.readouterr().err
    return out


def module_names(net: Network) -> list[str]:
    return [name for name, _ in net.adapter_modules()]


def test_lierla_on_sdxl_sized_model_has_kohyas_module_set() -> None:
    family = get_registry().family("sdxl")
    components = family.build_components(device="meta")
    names = module_names(Network.create("lora", family=family, components=components, options={"network_dim": 4}))
    unet = [n for n in names if n.startswith("lora_unet_")]
    te1 = [n for n in names if n.startswith("lora_te1_text_model_")]
    te2 = [n for n in names if n.startswith("lora_te2_text_model_")]
    assert (len(unet), len(te1), len(te2)) == (722, 72, 192)  # kohya's SDXL LoRA counts
    assert len(unet) + len(te1) + len(te2) == len(names)
    for name in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_7_1_transformer_blocks_9_ff_net_2",
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k",
        "lora_unet_output_blocks_0_1_proj_out",
        "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0",
        "lora_te2_text_model_encoder_layers_31_mlp_fc2",
    ):
        assert name in names
    # kohya's SDXL block index: input_blocks_N -> 1 + N, middle_block_N -> 10 + N, output_blocks_N -> 13 + N
    assert [sdxl_block_index(n) for n in (unet[0], "lora_unet_middle_block_1_proj_in", "lora_unet_output_blocks_8_1_x",
                                          "lora_unet_time_embed_0", "lora_unet_out_2", "lora_te1_x")] == [5, 11, 21, 0, 22, -1]


@pytest.mark.parametrize("network", ["dylora", "loha", "c3lier"])
def test_every_type_takes_kohyas_sdxl_names(network: str) -> None:
    """The other built-in types and a third-party one (the LoHa example) on the SDXL-sized model:
    LierLa's 986 layers (C3Lier adds the 3x3 convs of the ResNet blocks and samplers)."""
    family = get_registry().family("sdxl")
    components = family.build_components(device="meta")
    lierla = set(module_names(Network.create("lora", family=family, components=components)))
    options = {"network_dim": 4, **{"dylora": {"unit": 2}, "c3lier": {"conv_dim": 4}}.get(network, {})}
    names = set(module_names(Network.create(network, family=family, components=components, options=options)))
    if network != "c3lier":
        assert names == lierla and len(names) == 722 + 72 + 192
        return
    extra = names - lierla
    assert lierla < names and all(n.startswith("lora_unet_") for n in extra)
    containers = [m for m in components["unet"].modules()
                  if type(m).__name__ in ("ResnetBlock2D", "Downsample2D", "Upsample2D")]
    layers = {id(layer) for c in containers for layer in c.modules() if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))}
    assert len(extra) == len(layers)  # kohya's C3Lier: every Linear/Conv2d of the ResNet blocks and samplers


def test_sd_names_are_unchanged() -> None:
    family = get_registry().family("sd1")
    net = Network.create("lora", family=family, components=family.build_components(device="meta"))
    names = module_names(net)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names and len(names) == 192 + 72


def test_block_dims_need_kohyas_23_sdxl_blocks() -> None:
    model = build_tiny_sdxl_model()
    dims = ",".join(["0"] * 5 + ["2"] + ["0"] * 17)  # rank 2 in block 5 only (input_blocks_4)
    net = Network.create("lora", model=model, options={"block_dims": dims, "block_alphas": ",".join(["1"] * 23)})
    unet = [n for n in module_names(net) if n.startswith("lora_unet_")]
    assert unet and all(n.startswith("lora_unet_input_blocks_4_") for n in unet)
    with pytest.raises(BlockSpecError, match=r"block_dims: expected exactly 23 comma-separated values, got 25") as info:
        Network.create("lora", model=model, options={"block_dims": ",".join(["4"] * 25)})
    assert "\n" not in str(info.value)
    with pytest.raises(BlockSpecError, match=r"down_lr_weight: expected 9 values, got 12"):
        Network.create("lora", model=model, options={"down_lr_weight": ",".join(["1"] * 12)})
    net = Network.create("lora", model=model, options={"mid_lr_weight": "1,0,1"})  # lr 0 for middle_block_1
    names = module_names(net)
    assert not any(n.startswith("lora_unet_middle_block_") for n in names)
    assert any(n.startswith("lora_unet_output_blocks_") for n in names)


def test_diffusers_folder_and_single_file_load_the_same_weights(tiny) -> None:
    folder, single = load_sd_model(tiny.folder), load_sd_model(tiny.single)
    assert folder.family.name == single.family.name == "tiny_sdxl"
    for name in ("text_encoder", "text_encoder_2", "unet"):
        a, b = folder.components[name].state_dict(), single.components[name].state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(v, single.vae.state_dict()[k]) for k, v in folder.vae.state_dict().items())
    built = build_tiny_sdxl_model(seed=0)
    assert torch.equal(built.unet.conv_in.weight, single.unet.conv_in.weight)
    with safe_open(tiny.single, "pt") as handle:
        keys = set(handle.keys())
        projection = handle.get_tensor("conditioner.embedders.1.model.text_projection")
    # open_clip's layout: fused q/k/v, x @ P projection
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys and "first_stage_model.encoder.conv_in.weight" in keys
    encoder_2: Any = built.components["text_encoder_2"]
    assert torch.equal(projection, encoder_2.text_projection.weight.t())


def test_a_single_file_without_an_embedder_is_one_line(tiny, tmp_path: Path) -> None:
    tensors = {k: v for k, v in load_file(tiny.single).items() if not k.startswith("conditioner.embedders.1.")}
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken)
    with pytest.raises(ModelLoadError, match=r"SDXL checkpoint without its OpenCLIP ViT-bigG text encoder") as info:
        load_sd_model(broken)
    assert "conditioner.embedders.1.model.*" in str(info.value) and "\n" not in str(info.value)


def test_check_and_inspect_an_sdxl_lora(tiny, tmp_path: Path, capsys) -> None:
    model = build_tiny_sdxl_model()
    net = Network.create("lora", model=model, options={"network_dim": 2, "network_alpha": 1})
    randomize(net, std=0.1)
    lora = save_adapter(tmp_path / "sdxl_lora.safetensors", {k: v.clone() for k, v in net.state_dict().items()},
                        metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    count = len(module_names(net))
    for model_arg in (tiny.folder, tiny.single):
        capsys.readouterr()
        assert main(["check", str(lora), "--model", str(model_arg), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["ok"] and data["unmatched"] == [] and len(data["modules"]) == count
        assert data["diffusers_issues"] == []  # LDM-style U-Net names are SDXL's standard, which diffusers reads
    modules = {m["module"]: m for m in data["modules"]}
    assert modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]["layer"] == (
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    assert main(["inspect", str(lora)]) == 0
    out = capsys.readouterr().out
    assert "base model:    sdxl_base_v1-0" in out and f"modules:       {count} ({3 * count} keys)" in out
    assert "lora_te2_text_model_encoder_layers_2_mlp_fc2" in out
    # SDXL's blocks in LBW names: input_blocks_4 (depth 1) is IN04, input_blocks_7 (depth 2) IN07
    rows = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line[:3] in ("IN0", "MID", "OUT")}
    assert rows == {"IN04": 12, "IN05": 12, "IN07": 22, "IN08": 22, "MID": 22, "OUT00": 22, "OUT01": 22,
                    "OUT02": 22, "OUT03": 12, "OUT04": 12, "OUT05": 12}
    assert data["blocks"]["IN07"] == {"modules": 22, "unmatched_keys": 0} and data["blocks"]["TE"]["modules"] == 30

    # the same file with SD 1.x's one-encoder prefix: refused, naming why
    renamed = {k.replace("lora_te1_", "lora_te_"): v for k, v in net.state_dict().items() if "lora_te2_" not in k}
    sd_style = save_adapter(tmp_path / "sd_style.safetensors", renamed)
    assert main(["check", str(sd_style), "--model", str(tiny.folder)]) == 1
    assert "lora_te_" in capsys.readouterr().out


def test_diffusers_named_unet_modules_load_onto_the_same_layers(tiny) -> None:
    model = build_tiny_sdxl_model()
    net = Network.create("lora", model=model, options={"network_dim": 2})
    randomize(net, std=0.1)
    tensors = net.state_dict()
    target = net.targets["lora_unet_input_blocks_4_1_proj_in"]
    diffusers_name = "lora_unet_" + target.module_path.replace(".", "_")
    renamed = {k.replace("lora_unet_input_blocks_4_1_proj_in.", f"{diffusers_name}."): v for k, v in tensors.items()}
    loaded = Network.from_weights(renamed, model=model)
    assert loaded.targets["lora_unet_input_blocks_4_1_proj_in"].layer is target.layer
    assert len(module_names(loaded)) == len(module_names(net))


def test_merge_into_the_single_file_equals_the_folder_merge(tiny, tmp_path: Path) -> None:
    model = build_tiny_sdxl_model()
    net = Network.create("c3lier", model=model, options={"network_dim": 2, "conv_dim": 2})
    randomize(net, std=0.1)
    lora = save_adapter(tmp_path / "c3lier.safetensors", {k: v.clone() for k, v in net.state_dict().items()})
    merged_file, merged_folder = tmp_path / "merged.safetensors", tmp_path / "merged"
    for source, target in ((tiny.single, merged_file), (tiny.folder, merged_folder)):
        assert main(["merge", "--sd_model", str(source), "--models", str(lora), "--save_to", str(target)]) == 0
    streamed, folder = load_sd_model(merged_file), load_sd_model(merged_folder)
    for name in ("text_encoder", "text_encoder_2", "unet"):
        a, b = streamed.components[name].state_dict(), folder.components[name].state_dict()
        base = model.components[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert sum(not torch.equal(a[k], base[k]) for k in a) > 0, name
    # the fused OpenCLIP q/k/v of the single file took each part's delta: q of layer 0 as one example
    name = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    up, down = net.state_dict()[f"{name}.lora_up.weight"], net.state_dict()[f"{name}.lora_down.weight"]
    encoder_2: Any = model.components["text_encoder_2"]
    expected = encoder_2.text_model.encoder.layers[0].self_attn.q_proj.weight + 0.5 * up @ down
    with safe_open(merged_file, "pt") as handle:
        fused = handle.get_tensor("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight")
    torch.testing.assert_close(fused[: expected.shape[0]], expected, atol=1e-6, rtol=0)


def test_time_ids_follow_kohyas_size_conditioning() -> None:
    from adapt_sdxl.conditioning import size_conditioning, time_ids

    # a 1200x900 (w x h) image in the 1024x832 bucket: fitted inside it is 1024x768, 32 above
    assert size_conditioning((1200, 900), False, (1024, 832)) == [900, 1200, 32, 0, 832, 1024]
    # a 900x1200 one: fitted 624x832, 200 to the left; flipped, left = 1024 - (200 + 624)
    assert size_conditioning((900, 1200), False, (1024, 832)) == [1200, 900, 0, 200, 832, 1024]
    assert size_conditioning((901, 1200), True, (1024, 832))[3] == int(1024 - (199 + 832 * 901 / 1200))
    batch = {"original_sizes": [(40, 30), (32, 32)], "flipped": [False, True], "bucket_reso": (32, 32)}
    assert time_ids(batch).tolist() == [[30.0, 40.0, 4.0, 0.0, 32.0, 32.0], [32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]
    with pytest.raises(ConfigError, match="lacks flipped, bucket_reso"):
        time_ids({"original_sizes": [(40, 30)]})


def test_train_and_generate_on_the_tiny_sdxl_folder(tiny, tmp_path: Path, capsys) -> None:
    out = train_tiny(tiny, tmp_path, capsys)
    adapter = load_adapter(out / "last.safetensors")
    assert adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert adapter.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert adapter.metadata["ss_v2"] == "False"
    ups = [k for k in adapter.tensors if k.endswith("lora_up.weight")]
    for prefix in ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_output_blocks_"):
        assert any(adapter.tensors[k].abs().sum() > 0 for k in ups if k.startswith(prefix)), prefix  # all trained
    images = tmp_path / "images"
    assert main([
        "generate", "--model", str(tiny.folder), "--network_weights", str(out / "last.safetensors"),
        "--prompt", "a sks shape", "--W", "32", "--H", "32", "--steps", "2", "--seed", "3", "--outdir", str(images),
    ]) == 0, capsys.readouterr().err
    (png,) = images.glob("*.png")
    assert Image.open(png).size == (32, 32)


def test_denoising_loss_conditions_on_the_images_sizes(tiny, tmp_path: Path) -> None:
    from adapters_core.train.args import TrainArgs
    from adapters_core.train.components import build_dataset
    from adapters_core.train.evaluation import denoising_loss

    data = write_demo_dataset(tmp_path / "data", n_images=1, size=32, seed=0)
    args = TrainArgs(pretrained_model_name_or_path=str(tiny.folder), train_data_dir=str(data),
                     caption_extension=".txt", resolution="32", output_dir=str(tmp_path / "out"))
    model, dataset = load_sd_model(tiny.folder), build_dataset(args, None)
    loss = denoising_loss(model, dataset)
    assert 0.5 < loss < 2.0  # epsilon MSE of an untrained model: about 1
    model.unet.add_embedding.linear_1.weight.data.mul_(3.0)  # the size/pooled embedding takes part
    assert denoising_loss(model, dataset) != loss


def test_extract_from_two_sdxl_single_files(tiny, tmp_path: Path, capsys) -> None:
    tuned = tmp_path / "tuned.safetensors"
    write_tiny_sdxl_model(tmp_path / "tuned", seed=1, single_file=tuned)
    out = tmp_path / "extracted.safetensors"
    assert main(["extract", "--model_org", str(tiny.single), "--model_tuned", str(tuned), "--save_to", str(out),
                 "--dim", "2"]) == 0, capsys.readouterr().err
    adapter = load_adapter(out)
    modules = {key.partition(".")[0] for key in adapter.tensors}
    assert len(modules) == 222 and adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "lora_unet_output_blocks_5_1_transformer_blocks_0_ff_net_2" in modules
    assert sum(m.startswith("lora_te2_") for m in modules) == 18  # 3 layers x 6
    assert main(["check", str(out), "--model", str(tiny.single)]) == 0


def test_unet_only_training_with_cached_text_encoder_outputs(tiny, tmp_path: Path, capsys) -> None:
    out = train_tiny(tiny, tmp_path, capsys, "--network_train_unet_only", "--cache_text_encoder_outputs",
                     "--cache_latents")
    adapter = load_adapter(out / "last.safetensors")
    modules = {key.partition(".")[0] for key in adapter.tensors}
    assert modules and all(m.startswith("lora_unet_") for m in modules)
    ups = [k for k in adapter.tensors if k.endswith("lora_up.weight")]
    assert any(adapter.tensors[k].abs().sum() > 0 for k in ups)


@pytest.mark.parametrize("network", ["dylora", "loha"])
def test_training_other_types_on_sdxl_with_timestep_bounds(tiny, tmp_path: Path, capsys, network: str) -> None:
    unit = ["--network_args", "unit=1"] if network == "dylora" else []
    out = train_tiny(tiny, tmp_path, capsys, "--network", network, *unit, "--min_timestep", "200", "--max_timestep", "400")
    adapter = load_adapter(out / "last.safetensors")
    names = {key.partition(".")[0] for key in adapter.tensors}
    assert any(n.startswith("lora_te1_") for n in names) and any(n.startswith("lora_te2_") for n in names)
    assert any(n.startswith("lora_unet_input_blocks_") for n in names)
    assert adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    trained = [k for k in adapter.tensors if k.endswith(("lora_up.weight", "hada_w1_a", "hada_w2_a"))]
    assert any(adapter.tensors[k].abs().sum() > 0 for k in trained)


def test_python_api_on_an_sdxl_pipeline_patches_like_a_merge(tmp_path: Path) -> None:
    from adapters_core.api import load_networks
    from adapters_core.models.pipeline import make_scheduler

    model = build_tiny_sdxl_model()
    net = Network.create("lora", model=model, options={"network_dim": 2})
    randomize(net, std=0.2)
    lora = save_adapter(tmp_path / "lora.safetensors", {k: v.clone() for k, v in net.state_dict().items()})
    scheduler = make_scheduler(model.noise_scheduler_config, "euler", v_parameterization=False)
    pipe = model.family.build_pipeline(model, scheduler)
    prompt = dict(prompt="a shape", height=32, width=32, num_inference_steps=2, output_type="latent")
    base = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    (patched,) = load_networks(pipe, [lora])
    assert patched.family.name == "tiny_sdxl" and len(module_names(patched)) == len(module_names(net))
    adapted = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    patched.remove()
    load_networks(pipe, [lora], merge=True)
    merged = pipe(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=0)
