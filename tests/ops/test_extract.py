"""``adapt extract``: the best rank-k fit of the difference of two checkpoints, per layer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tool_support import (  # noqa: F401 - fixtures
    TinyFiles,
    adapt,
    build_tiny_model,
    error_line,
    fulldelta,
    layer_weights,
    one_thread,
    reference_delta,
    targets,
    tiny,
    truncation_error,
)

from adapters_core.models import save_single_file, to_pipeline
from adapters_core.ops.deltas import read_adapter
from adapters_core.ops.extract import extract_from_models


def write_tuned(path: Path, *, seed: int, text_encoder: bool) -> Path:
    """The tiny model plus, on every candidate layer, a rank-6 change with decaying strength and noise."""
    model = build_tiny_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for target in targets(model):
            if target.component == "text_encoder" and not text_encoder:
                continue
            weight = target.layer.weight
            out, n = weight.shape[0], weight[0].numel()
            strength = torch.tensor([0.2 / (i + 1) for i in range(6)])
            change = (
                torch.randn(out, 6, generator=generator) * strength @ torch.randn(6, n, generator=generator) / n**0.5
            )
            change += 1e-3 * torch.randn(out, n, generator=generator)
            weight += change.reshape(weight.shape)
    return save_single_file(model, path)


@pytest.fixture(scope="module")
def tuned_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tuned(tmp_path_factory.mktemp("tuned") / "unet.safetensors", seed=1, text_encoder=False)


@pytest.fixture(scope="module")
def tuned_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tuned(tmp_path_factory.mktemp("tuned") / "all.safetensors", seed=2, text_encoder=True)


def differences(tiny: TinyFiles, tuned: Path) -> dict[str, torch.Tensor]:
    from adapters_core.models import load_sd_model

    after = layer_weights(load_sd_model(tuned, need_tokenizer=False))
    return {name: after[name] - weight for name, weight in layer_weights(tiny.model).items()}


def test_exact_extraction_is_the_truncated_svd_and_skips_an_unchanged_text_encoder(
    tiny: TinyFiles, tuned_unet: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "extracted.safetensors"
    with caplog.at_level(logging.WARNING):
        path, extraction = extract_from_models(
            tiny.single, tuned_unet, save_to=out, dim=4, svd="exact", clamp_quantile=1.0
        )
    assert "text encoder unchanged (max |diff| 0 <= --min_diff 0.01): extracting the U-Net only" in caplog.text
    assert not extraction.text_encoder_included
    adapter = read_adapter(path)
    diffs = differences(tiny, tuned_unet)
    unet_linear = {t.name for t in targets(tiny.model, conv=False) if t.component == "unet"}
    assert set(adapter.modules) == unet_linear
    for name, module in adapter.modules.items():
        assert module["lora_down.weight"].shape[0] == 4 and float(module["alpha"]) == 4.0
        error = float(torch.linalg.vector_norm(reference_delta(module, diffs[name].shape) - diffs[name]))
        assert error == pytest.approx(truncation_error(diffs[name], 4), rel=1e-4, abs=1e-6)
    meta = adapter.metadata
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == (
        "networks.lora",
        "4",
        "4.0",
    )
    assert (meta["ss_v2"], meta["ss_base_model_version"], meta["ss_network_args"]) == ("False", "sd_v1", "{}")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    pipe = to_pipeline(build_tiny_model())
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    base = layer_weights(tiny.model)
    for target in targets(pipe):  # type: ignore[arg-type]
        if target.name in adapter.modules:
            expected = base[target.name] + reference_delta(adapter.modules[target.name], base[target.name].shape)
            assert torch.allclose(target.layer.weight.detach().double(), expected, atol=1e-5)


def test_randomized_default_is_within_one_percent_and_covers_te_and_convs(
    tiny: TinyFiles, tuned_all: Path, tmp_path: Path, adapt
) -> None:
    out = tmp_path / "x.safetensors"
    code, _, _ = adapt(
        "extract",
        "--model-org",
        tiny.folder,
        "--model-tuned",
        tuned_all,
        "--save-to",
        out,
        "--dim",
        4,
        "--conv_dim",
        2,
        "--clamp_quantile",
        1,
    )
    assert code == 0
    adapter = read_adapter(out)
    diffs = differences(tiny, tuned_all)
    assert set(adapter.modules) == set(diffs)  # text encoder and 3x3 convs included
    assert '"conv_dim": "2"' in adapter.metadata["ss_network_args"]
    for name, module in adapter.modules.items():
        conv3x3 = diffs[name].dim() == 4 and diffs[name].shape[2] == 3
        rank = 2 if conv3x3 else 4
        assert module["lora_down.weight"].shape[0] == rank
        error = float(torch.linalg.vector_norm(reference_delta(module, diffs[name].shape) - diffs[name]))
        assert error <= 1.01 * truncation_error(diffs[name], rank) + 1e-7


def test_any_type_extracts_through_its_hook(tiny: TinyFiles, tuned_unet: Path, tmp_path: Path, fulldelta: str) -> None:
    path, _ = extract_from_models(tiny.folder, tuned_unet, save_to=tmp_path / "f.safetensors", dim=3, network=fulldelta)
    adapter = read_adapter(path)
    assert adapter.network == "fulldelta" and adapter.metadata["ss_network_module"] == "tests.fulldelta"
    diffs = differences(tiny, tuned_unet)
    name = next(iter(adapter.modules))
    error = float(
        torch.linalg.vector_norm(adapter.modules[name]["diff"].double() - diffs[name].reshape(diffs[name].shape[0], -1))
    )
    assert error == pytest.approx(truncation_error(diffs[name], 3), rel=1e-3)


def test_bad_input(tiny: TinyFiles, tmp_path: Path, adapt) -> None:
    out = tmp_path / "x.safetensors"
    code, _, err = adapt(
        "extract", "--model_org", tiny.single, "--model_tuned", tmp_path / "nope.safetensors", "--save_to", out
    )
    assert code == 2 and "nope.safetensors: no such file" in error_line(err)
    code, _, err = adapt("extract", "--model_org", tiny.single, "--save_to", out)
    assert code == 2 and "--model_tuned" in error_line(err)
    code, _, err = adapt(
        "extract", "--model_org", tiny.single, "--model_tuned", tiny.single, "--network", "nosuch", "--save_to", out
    )
    assert code == 2 and "unknown network type 'nosuch'" in error_line(err)
    assert not out.exists()
