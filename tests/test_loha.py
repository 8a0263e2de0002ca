"""The third-party LoHa plugin (examples/loha, distribution ``adapt-loha``) through every part of adapt.

It must be installed like any plugin (scripts/setup.sh does it):
    .venv/bin/pip install --no-deps --no-build-isolation -e examples/loha
Nothing here reaches into the core: the plugin is found through its entry point, checked by
the contract suite, trained, merged, svd-merged, extracted and checked with the CLI commands.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from helpers import randomize, te_out, unet_inputs, unet_out
from torch import nn

from adapters_core.formats import load_adapter, load_metadata
from adapters_core.models import build_tiny_model, load_sd_model, write_tiny_model
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.testing import run_contract

INSTALL = ".venv/bin/pip install --no-deps --no-build-isolation -e examples/loha"
if importlib.util.find_spec("adapt_loha") is None or "loha" not in get_registry().types:
    pytest.skip(f"the adapt-loha example plugin is not installed; run: {INSTALL}", allow_module_level=True)

from adapt_loha.math import loha_delta, loha_factors  # noqa: E402
from adapt_loha.module import LoHaModule  # noqa: E402

TOKENS = torch.tensor([[0, 5, 17, 42, 1] + [1] * 72])
OPTIONS = {"network_dim": 2, "network_alpha": 1, "conv_dim": 2, "conv_alpha": 1}


def command(name: str):
    """The command object of ``adapt <name>``, or a skip while its module is not written yet."""
    module_name = f"adapt_cli.commands.{name.replace('-', '_')}"
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} does not exist yet")
    return getattr(importlib.import_module(module_name), name.replace("-", "_"))


def invoke(name: str, *args: str | Path) -> str:
    result = CliRunner().invoke(command(name), [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    return te_out(model, TOKENS), unet_out(model, unet_inputs(model))


def assert_close(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], tolerance: float = 1e-4) -> None:
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < tolerance * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loha")
    write_tiny_model(root / "model", single_file=root / "tiny.safetensors")
    files = {}
    for seed in (0, 1):
        model = build_tiny_model()
        net = Network.create("loha", unet=model.unet, text_encoder=model.text_encoder, options=OPTIONS)
        randomize(net, seed=seed, std=0.3)
        files[seed] = root / f"loha{seed}.safetensors"
        net.save(files[seed])
    return SimpleNamespace(root=root, single=root / "tiny.safetensors", a=files[0], b=files[1])


def patched(*files_and_multipliers: tuple[Path, float]):
    model = build_tiny_model()
    for path, multiplier in files_and_multipliers:
        Network.from_file(path, unet=model.unet, text_encoder=model.text_encoder, multiplier=multiplier).apply()
    return outputs(model)


def test_registered_from_its_own_distribution():
    loha = get_registry().types["loha"]
    assert (loha.distribution, loha.version, loha.kohya_module) == ("adapt-loha", "0.1.0", "lycoris.kohya")


def test_contract_suite_passes_for_every_layer_kind_and_dtype():
    results = run_contract("loha")
    assert len(results) == 40 and set(results.values()) == {"passed"}


def test_delta_is_the_hadamard_product_of_two_low_rank_products():
    g = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(shape, generator=g) for shape in ((6, 3), (3, 5), (6, 3), (3, 5)))
    expected = (w1a @ w1b) * (w2a @ w2b) * (1.5 / 3)
    assert torch.allclose(loha_delta(w1a, w1b, w2a, w2b, torch.tensor(1.5), (6, 5)), expected)
    assert torch.allclose(loha_delta(w1a, w1b, w2a, w2b, None, (6, 5)), expected / 0.5)  # no alpha: alpha = dim


def test_extract_reproduces_a_low_rank_delta_exactly():
    g = torch.Generator().manual_seed(1)
    delta = (torch.randn(8, 3, generator=g) @ torch.randn(3, 4 * 9, generator=g)).reshape(8, 4, 3, 3)
    tensors = loha_factors(delta, 3, alpha=0.5)
    assert tensors["hada_w1_b"].shape == (3, 36) and float(tensors["alpha"]) == 0.5
    rebuilt = loha_delta(*(tensors[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")), delta.shape)
    assert torch.allclose(rebuilt, delta, atol=1e-4)


def test_fresh_module_adds_nothing_and_uses_the_layers_convolution():
    layer = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    module = LoHaModule("lora_unet_x", layer, dim=2, alpha=1.0)
    x = torch.randn(1, 4, 7, 7)
    assert torch.equal(module(x, layer(x)), layer(x))
    with torch.no_grad():
        module.hada_w2_a.normal_()
    expected = layer(x) + nn.functional.conv2d(x, module.delta_weight(), stride=2, padding=1)
    assert torch.allclose(module(x, layer(x)), expected, atol=1e-5)


def test_lycoris_computes_the_same_forward():
    lycoris = pytest.importorskip("lycoris.modules.loha", reason="lycoris-lora (the bench extra) is not installed")
    for layer, x in ((nn.Linear(16, 24), torch.randn(2, 16)), (nn.Conv2d(16, 24, 3, padding=1), torch.randn(2, 16, 5, 5))):
        theirs = lycoris.LohaModule("lora_unet_x", layer, lora_dim=4, alpha=2)
        theirs.apply_to()
        with torch.no_grad():
            for parameter in theirs.parameters():
                parameter.normal_()
            state = theirs.state_dict()
            ours = LoHaModule("lora_unet_x", layer, dim=4, alpha=2.0)
            ours.load_state_dict({key: state[key] for key in ours.state_dict()})
            assert torch.allclose(layer(x), ours(x, theirs.org_forward(x)), atol=1e-4)


def test_files_are_detected_and_checked(assets):
    loaded = load_adapter(assets.a)
    assert any(key.endswith(".hada_w2_b") for key in loaded.tensors)
    assert get_registry().detect(loaded.tensors, {}) == "loha"
    model = build_tiny_model()
    network = Network.from_file(assets.a, unet=model.unet, text_encoder=model.text_encoder)
    assert network.network_type.name == "loha" and len(list(network.adapter_modules())) == 129
    result = CliRunner().invoke(command("check"), [str(assets.a), "--model", "tiny", "--json"])
    assert result.exit_code == 0 and '"unmatched": []' in result.output
    assert "diffusers loads only kohya LoRA keys" in result.output


def test_train_with_the_cli(assets, tmp_path):
    from adapters_core.train.dataset import write_demo_dataset

    data = write_demo_dataset(tmp_path / "data", n_images=4, size=32)
    invoke("train", "--pretrained_model_name_or_path", assets.root / "model", "--train_data_dir", data,
           "--caption_extension", ".txt", "--resolution", "32", "--output_dir", tmp_path / "out",
           "--output_name", "trained", "--network", "loha", "--network_dim", "2", "--network_args", "conv_dim=2",
           "--learning_rate", "1e-2", "--max_train_steps", "2", "--train_batch_size", "2",
           "--max_data_loader_n_workers", "0", "--seed", "0")
    path = tmp_path / "out" / "trained.safetensors"
    tensors = load_adapter(path).tensors
    assert load_metadata(path)["ss_network_module"] == "lycoris.kohya"
    w2a = [value for key, value in tensors.items() if key.endswith(".hada_w2_a")]
    assert w2a and any(value.abs().max() > 0 for value in w2a)  # trained away from the zero init
    assert any(key.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for key in tensors)  # conv_dim=2


def test_merge_into_a_checkpoint_matches_patching(assets, tmp_path):
    invoke("merge", "--sd_model", assets.single, "--models", assets.a, assets.b, "--ratios", "0.7", "-0.4",
           "--save_to", tmp_path / "merged.safetensors")
    merged = outputs(load_sd_model(tmp_path / "merged.safetensors"))
    assert_close(merged, patched((assets.a, 0.7), (assets.b, -0.4)))


def test_svd_merge_at_full_rank_is_exact(assets, tmp_path):
    # each LoHa delta has rank <= dim**2 = 4, so rank 8 holds the sum exactly
    invoke("svd-merge", "--models", assets.a, assets.b, "--ratios", "1", "0.5", "--new_rank", "8",
           "--save_to", tmp_path / "svd.safetensors")
    assert get_registry().detect(load_adapter(tmp_path / "svd.safetensors").tensors, {}) == "loha"
    assert_close(patched((tmp_path / "svd.safetensors", 1.0)), patched((assets.a, 1.0), (assets.b, 0.5)), 1e-3)


def test_extract_from_two_checkpoints(assets, tmp_path):
    invoke("merge", "--sd_model", assets.single, "--models", assets.a, "--save_to", tmp_path / "tuned.safetensors")
    invoke("extract", "--model_org", assets.single, "--model_tuned", tmp_path / "tuned.safetensors",
           "--network", "loha", "--dim", "4", "--conv_dim", "4", "--svd", "exact", "--clamp_quantile", "1",
           "--min_diff", "0", "--save_to", tmp_path / "extracted.safetensors")
    assert_close(patched((tmp_path / "extracted.safetensors", 1.0)), outputs(load_sd_model(tmp_path / "tuned.safetensors")), 1e-3)
