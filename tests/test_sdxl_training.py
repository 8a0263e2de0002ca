"""kohya's SDXL training flags on the tiny SDXL model: one learning rate per text encoder, the
VAE's float32 under fp16, text-encoder output caching with the pooled embedding, metadata, --full_bf16."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adapt_cli.main import main
from adapt_sdxl.tiny import build_tiny_sdxl_model, write_tiny_sdxl_model
from adapters_core.errors import ConfigError
from adapters_core.formats import load_adapter
from adapters_core.models import write_tiny_model
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.train.components import vae_dtype
from adapters_core.train.dataset import write_demo_dataset
from adapters_core.train.param_groups import optimizer_param_groups
from adapters_core.train.text_cache import TE_OUTPUTS_SUFFIX


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("sdxl_train")
    write_tiny_sdxl_model(root / "model", seed=0)
    return SimpleNamespace(folder=root / "model", data=write_demo_dataset(root / "data", n_images=2, size=32, seed=0))


def train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
        "--caption_extension", ".txt", "--resolution", "32", "--output_dir", str(out), "--max_train_steps", "2",
        "--learning_rate", "1e-2", "--seed", "1", "--network_dim", "2", "--max_data_loader_n_workers", "0",
        "--no_report_images", *extra,
    ]


def test_two_text_encoder_lrs_give_one_group_per_encoder() -> None:
    net = Network.create("lora", model=build_tiny_sdxl_model(), options={"network_dim": 2})
    groups, names = optimizer_param_groups(net, (1e-5, 2e-5), unet_lr=None, default_lr=1e-4)
    assert names == ["text_encoder", "text_encoder_2", "unet"]
    assert [g["lr"] for g in groups] == [1e-5, 2e-5, 1e-4]
    te1 = {id(p) for n, m in net.adapter_modules() if n.startswith("lora_te1_") for p in m.parameters()}
    te2 = {id(p) for n, m in net.adapter_modules() if n.startswith("lora_te2_") for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == te1 and {id(p) for p in groups[1]["params"]} == te2
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    groups, names = optimizer_param_groups(net, (3e-5,), unet_lr=2e-4, default_lr=1e-4)  # one value: both encoders
    assert names == ["text_encoder", "unet"] and [g["lr"] for g in groups] == [3e-5, 2e-4]
    assert {id(p) for p in groups[0]["params"]} == te1 | te2
    groups, names = optimizer_param_groups(net, (0.0, 2e-5), unet_lr=None, default_lr=1e-4)  # lr 0: no group
    assert names == ["text_encoder_2", "unet"]


def test_two_text_encoder_lrs_on_a_one_encoder_model_are_refused(tmp_path: Path, capsys) -> None:
    family = get_registry().family("sd1")
    net = Network.create("lora", family=family, components=family.build_components(device="meta"))
    with pytest.raises(ConfigError, match=r"--text_encoder_lr: 2 values given, but a .* has 1 text encoder "):
        optimizer_param_groups(net, (1e-5, 2e-5), unet_lr=None, default_lr=1e-4)
    write_tiny_model(tmp_path / "sd", seed=0)
    data = write_demo_dataset(tmp_path / "data", n_images=1, size=32, seed=0)
    argv = train_argv(tmp_path / "sd", data, tmp_path / "out", "--text_encoder_lr", "1e-5", "2e-5")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapt: error: --text_encoder_lr: 2 values given" in err and "give one value" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "last.safetensors").exists()


def test_train_with_a_learning_rate_per_text_encoder(tiny, tmp_path: Path, capsys) -> None:
    # te1's lr 0 leaves its modules as created (lora_up zero); te2's trains
    out = tmp_path / "out"
    assert main(train_argv(tiny.folder, tiny.data, out, "--text_encoder_lr", "0", "1e-2")) == 0, capsys.readouterr()
    adapter = load_adapter(out / "last.safetensors")
    ups = {k: v for k, v in adapter.tensors.items() if k.endswith("lora_up.weight")}
    assert all(v.abs().sum() == 0 for k, v in ups.items() if k.startswith("lora_te1_"))
    assert any(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_te2_"))
    assert any(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_unet_"))
    assert adapter.metadata["ss_text_encoder_lr"] == "[0.0, 0.01]"  # kohya writes the flag's list
    assert adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert adapter.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_the_sdxl_vae_stays_float32_under_fp16() -> None:
    sdxl, sd1 = get_registry().family("sdxl"), get_registry().family("sd1")
    assert sdxl.vae_needs_float32 and not sd1.vae_needs_float32
    assert vae_dtype(torch.float16, False, sdxl) == torch.float32
    assert vae_dtype(torch.bfloat16, False, sdxl) == torch.bfloat16  # bf16 has float32's range
    assert vae_dtype(torch.float16, False, sd1) == torch.float16
    assert vae_dtype(torch.float16, True, sd1) == torch.float32  # --no_half_vae
    assert vae_dtype(torch.float32, False, sdxl) == torch.float32


def test_cached_text_encoder_outputs_on_disk_hold_the_pooled_embedding(tiny, tmp_path: Path, capsys) -> None:
    data = write_demo_dataset(tmp_path / "data", n_images=2, size=32, seed=0)
    unet_only = ("--network_train_unet_only", "--cache_latents")
    uncached, cached = tmp_path / "uncached", tmp_path / "cached"
    assert main(train_argv(tiny.folder, data, uncached, *unet_only)) == 0, capsys.readouterr()
    assert main(train_argv(tiny.folder, data, cached, *unet_only, "--cache_text_encoder_outputs_to_disk")) == 0
    files = sorted(data.rglob(f"*{TE_OUTPUTS_SUFFIX}"))
    assert len(files) == 2
    model = build_tiny_sdxl_model(seed=0)
    caption = files[0].with_name(files[0].name.replace(TE_OUTPUTS_SUFFIX, ".txt")).read_text(encoding="utf-8")
    with torch.no_grad():
        expected = model.family.encode_text(model.components, model.tokenizers, [caption.strip()],
                                            max_token_length=None, clip_skip=None)
    with np.load(files[0], allow_pickle=False) as npz:
        for name, value in expected.items():  # both encoders' states and the pooled embedding
            torch.testing.assert_close(torch.from_numpy(npz[name]), value[0], atol=1e-5, rtol=0)
    assert "pooled" in expected and expected["pooled"].ndim == 2
    a, b = load_adapter(uncached / "last.safetensors"), load_adapter(cached / "last.safetensors")
    assert set(a.tensors) == set(b.tensors) and all(k.startswith("lora_unet_") for k in a.tensors)
    for key, value in a.tensors.items():  # batch size 1: cached training is uncached training
        assert torch.equal(value, b.tensors[key]), key


def test_buckets_samples_and_resume_on_sdxl(tiny, tmp_path: Path, capsys) -> None:
    """What works for SD 1.x works on SDXL: images of two sizes in buckets, samples through the
    SDXL pipeline, and a run resumed from its step-2 state ends where the whole run ends."""
    from PIL import Image

    data = tmp_path / "img" / "10_sks shape"
    data.mkdir(parents=True)
    for index, size in enumerate([(48, 32), (32, 48), (40, 40)]):
        Image.new("RGB", size, (60 * index, 90, 200 - 50 * index)).save(data / f"{index}.png")
        (data / f"{index}.txt").write_text("sks shape", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks shape --w 64 --h 72 --s 2 --d 3\n", encoding="utf-8")
    common = ["--enable_bucket", "--min_bucket_reso", "16", "--max_bucket_reso", "64", "--bucket_reso_steps", "16",
              "--max_train_steps", "4", "--lr_scheduler", "cosine"]
    full = train_argv(tiny.folder, data.parent, tmp_path / "full", *common, "--save_every_n_steps", "2",
                      "--save_state", "--sample_prompts", str(prompts), "--sample_every_n_steps", "2")
    assert main(full) == 0, capsys.readouterr().err
    samples = sorted((tmp_path / "full" / "sample").glob("*_3.png"))
    assert len(samples) == 2  # steps 2 and 4
    with Image.open(samples[0]) as image:
        assert image.size == (64, 72)
    state = tmp_path / "full" / "at-step00000002-state"
    resumed = train_argv(tiny.folder, data.parent, tmp_path / "resumed", *common, "--resume", str(state))
    assert main(resumed) == 0, capsys.readouterr().err
    whole = load_adapter(tmp_path / "full" / "last.safetensors")
    again = load_adapter(tmp_path / "resumed" / "last.safetensors")
    assert whole.tensors.keys() == again.tensors.keys()
    for key, value in whole.tensors.items():
        torch.testing.assert_close(again.tensors[key], value, atol=1e-6, rtol=0, msg=key)
    assert json.loads(whole.metadata["ss_bucket_info"])["buckets"]  # the bucketing took more than one size
    assert whole.metadata["ss_steps"] == again.metadata["ss_steps"] == "4"


def test_full_bf16_trains_an_sdxl_lora_in_bfloat16(tiny, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = train_argv(tiny.folder, tiny.data, out, "--mixed_precision", "bf16", "--full_bf16", "--save_state")
    assert main(argv) == 0, capsys.readouterr().err
    trained = load_adapter(out / "last-state" / "model.safetensors")  # the weights as they trained
    assert {t.dtype for t in trained.tensors.values()} == {torch.bfloat16}
    adapter = load_adapter(out / "last.safetensors")
    assert {t.dtype for t in adapter.tensors.values()} == {torch.float32}  # --save_precision's default
    for key, value in adapter.tensors.items():
        assert torch.equal(value, trained.tensors[key].float()), key
    for prefix in ("lora_te1_", "lora_te2_", "lora_unet_"):
        assert any(v.abs().sum() > 0 for k, v in adapter.tensors.items() if k.startswith(prefix)
                   and k.endswith("lora_up.weight")), prefix
    assert adapter.metadata["ss_full_bf16"] == "True" and adapter.metadata["ss_mixed_precision"] == "bf16"
