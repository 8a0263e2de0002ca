"""``adapt extract``: the best rank-k fit of the difference of two checkpoints, per layer."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from output_support import assert_fit_matches, printed_fit
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

from adapters_core.errors import NonFiniteError
from adapters_core.linalg import (
    clamp_factors,
    clip_outliers,
    low_rank_factors,
    outlier_fence,
    product_distance,
    truncated_svd,
)
from adapters_core.models import save_single_file, to_pipeline
from adapters_core.ops.deltas import read_adapter
from adapters_core.ops.extract import CLIP_BUDGET, extract_from_models, extract_modules
from adapters_core.targets import layer_weight

CONV = "lora_unet_down_blocks_1_resnets_0_conv2"  # a 3x3 conv of the tiny U-Net, 64 -> 64


# -- the clamp on plain tensors ---------------------------------------------------------------
def relative_error(delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    matrix = delta.reshape(delta.shape[0], -1).double()
    return float((matrix - up.double() @ down.double()).norm() / matrix.norm())


def optimal_error(delta: torch.Tensor, rank: int) -> float:
    return truncation_error(delta, rank) / float(delta.double().norm())


def unbalanced_conv_change(rank: int, generator: torch.Generator) -> torch.Tensor:
    """A rank-``rank`` change of a 320 -> 320 3x3 conv: few outputs, many inputs (9 x 320)."""
    return (torch.randn(320, rank, generator=generator) @ torch.randn(rank, 320 * 9, generator=generator)).reshape(
        320, 320, 3, 3
    )


@functools.cache
def changes() -> dict[str, tuple[torch.Tensor, int]]:
    """Layer changes of every kind (exact low rank, decaying spectrum, heavy tails, a spike)."""
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.arange(1, 321.0) ** -0.5
    decaying = (torch.randn(320, 320, generator=generator) * spectrum) @ torch.randn(320, 1280, generator=generator)
    spiked = torch.randn(640, 3, generator=generator) @ torch.randn(3, 640, generator=generator)
    spiked[5, 7] += 300.0
    return {
        "conv rank 3 at rank 3": (unbalanced_conv_change(3, generator), 3),
        "conv rank 3 at rank 8": (unbalanced_conv_change(3, generator), 8),
        "decaying spectrum at rank 32": (decaying, 32),
        "heavy tails at rank 16": (torch.distributions.StudentT(2.0).sample((320, 768)), 16),
        "rank 3 plus a spike at rank 4": (spiked, 4),
    }


def test_kohya_clamp_loses_the_exact_fit_of_an_unbalanced_conv_change() -> None:
    delta = unbalanced_conv_change(3, torch.Generator().manual_seed(1))
    assert relative_error(delta, *low_rank_factors(delta, 3, clamp_quantile=1.0)) < 1e-5
    assert relative_error(delta, *low_rank_factors(delta, 3, clamp_quantile=0.99)) > 0.15
    assert relative_error(delta, *low_rank_factors(delta, 3, clip_budget=CLIP_BUDGET)) < 1e-5  # no outliers


@pytest.mark.parametrize("scale", [1e-5, 1.0, 1e3])
@pytest.mark.parametrize("case", list(changes()))
def test_default_clip_stays_within_one_percent_of_the_optimal_fit(case: str, scale: float) -> None:
    delta, rank = changes()[case]
    delta = delta * scale
    up, down = low_rank_factors(delta, rank, clip_budget=CLIP_BUDGET)
    assert relative_error(delta, up, down) <= optimal_error(delta, rank) + CLIP_BUDGET


def test_default_clip_keeps_gaussian_factors_balanced_and_whole() -> None:
    generator = torch.Generator().manual_seed(2)
    delta = torch.randn(512, 16, generator=generator) @ torch.randn(16, 512, generator=generator)
    delta += torch.randn(512, 512, generator=generator)  # full-rank noise: the rank-16 fit keeps a part
    up, down = low_rank_factors(delta, 16, clip_budget=CLIP_BUDGET)
    u, s, vh = truncated_svd(delta, 16)
    assert torch.equal(up, u * s.sqrt()) and torch.equal(down, s.sqrt().unsqueeze(1) * vh)  # no outliers


def test_clip_outliers_clips_an_outlier_only_as_far_as_the_budget_allows() -> None:
    generator = torch.Generator().manual_seed(5)
    up, down = torch.randn(400, 8, generator=generator), torch.randn(8, 900, generator=generator)
    up[3, 2] = 40.0  # an outlier: the bulk is N(0, 1), the fence about 8.3
    fence = outlier_fence(up)
    assert 7.0 < fence < 10.0 and outlier_fence(down) > down.abs().max()
    full = float((up @ down).norm())
    generous_up, generous_down = clip_outliers(up, down, budget=full)
    assert generous_up[3, 2] == pytest.approx(fence) and torch.equal(generous_down, down)
    others = torch.ones_like(up, dtype=torch.bool)
    others[3, 2] = False
    assert torch.equal(generous_up[others], up[others])  # only the outlier moved
    budget = 0.01 * full
    tight_up, tight_down = clip_outliers(up, down, budget=budget)
    assert fence < tight_up[3, 2] < 40.0  # clipped less: clipping to the fence costs more
    assert product_distance(up, down, tight_up, tight_down) <= budget


def test_explicit_clamp_quantile_is_kohyas() -> None:
    generator = torch.Generator().manual_seed(3)
    delta = torch.randn(96, 200, generator=generator)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    up, down = u[:, :8] * s[:8], vh[:8]
    limit = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.9))  # signed values
    got_up, got_down = low_rank_factors(delta, 8, clamp_quantile=0.9)
    assert torch.allclose(got_up, up.clamp(-limit, limit), atol=1e-5)
    assert torch.allclose(got_down, down.clamp(-limit, limit), atol=1e-5)
    assert clamp_factors(up, down, 1.0)[0].abs().max() == up.abs().max()


def test_product_distance_is_the_frobenius_norm_of_the_difference() -> None:
    generator = torch.Generator().manual_seed(4)
    a, b, c, d = (torch.randn(*shape, generator=generator) for shape in ((30, 4), (4, 50), (30, 4), (4, 50)))
    assert product_distance(a, b, c, d) == pytest.approx(float((a @ b - c @ d).norm()), rel=1e-5)


def write_tuned(path: Path, *, seed: int, text_encoder: bool) -> Path:
    """The tiny model plus, on every candidate layer, a rank-6 change with decaying strength and noise."""
    model = build_tiny_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for target in targets(model):
            if target.component == "text_encoder" and not text_encoder:
                continue
            weight = layer_weight(target.layer)
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
    for target in targets(pipe):
        if target.name in adapter.modules:
            expected = base[target.name] + reference_delta(adapter.modules[target.name], base[target.name].shape)
            assert torch.allclose(layer_weight(target.layer).detach().double(), expected, atol=1e-5)


def test_defaults_are_within_one_percent_cover_te_and_convs_and_print_the_fit(
    tiny: TinyFiles, tuned_all: Path, tmp_path: Path, adapt
) -> None:
    out = tmp_path / "x.safetensors"
    code, stdout, _ = adapt(
        "extract", "--model-org", tiny.folder, "--model-tuned", tuned_all, "--save-to", out, "--dim", 4, "--conv_dim", 2
    )
    assert code == 0
    adapter = read_adapter(out)
    diffs = differences(tiny, tuned_all)
    assert set(adapter.modules) == set(diffs)  # text encoder and 3x3 convs included
    assert '"conv_dim": "2"' in adapter.metadata["ss_network_args"]
    pairs = {}
    for name, module in adapter.modules.items():
        conv3x3 = diffs[name].dim() == 4 and diffs[name].shape[2] == 3
        rank = 2 if conv3x3 else 4
        assert module["lora_down.weight"].shape[0] == rank
        pairs[name] = (diffs[name], reference_delta(module, diffs[name].shape))
        error = float(torch.linalg.vector_norm(pairs[name][1] - diffs[name]))
        # randomized SVD: within 1% of the optimum; the outlier clip: 1% of the change's norm more at most
        limit = 1.01 * truncation_error(diffs[name], rank) + CLIP_BUDGET * float(diffs[name].norm())
        assert error <= limit + 1e-7
    assert stdout.startswith(f"{out}: extracted {len(diffs)} modules; fit: kept ")
    fit = assert_fit_matches(stdout, pairs)
    assert 0.5 < fit.worst_kept < fit.kept < 1.0


def write_unbalanced_conv_change(path: Path) -> tuple[Path, torch.Tensor]:
    """The tiny model with one 3x3 conv changed by an exact rank-2 change."""
    model = build_tiny_model()
    target = next(t for t in targets(model) if t.name == CONV)
    generator = torch.Generator().manual_seed(9)
    weight = layer_weight(target.layer)
    change = (torch.randn(weight.shape[0], 2, generator=generator) @ torch.randn(2, weight[0].numel(), generator=generator))
    with torch.no_grad():
        weight += 0.01 * change.reshape(weight.shape)
    return save_single_file(model, path), 0.01 * change


def test_extract_recovers_an_unbalanced_conv_change_that_kohyas_clamp_spoils(
    tiny: TinyFiles, tmp_path: Path, adapt
) -> None:
    tuned, change = write_unbalanced_conv_change(tmp_path / "conv.safetensors")
    diff = differences(tiny, tuned)[CONV]
    assert torch.allclose(diff.float(), change.reshape(diff.shape), atol=1e-6)
    shown = {}
    for label, extra in (("default", ()), ("kohya", ("--clamp_quantile", 0.99))):
        out = tmp_path / f"{label}.safetensors"
        args = ("extract", "--model_org", tiny.single, "--model_tuned", tuned, "--save_to", out, "--dim", 2)
        code, stdout, _ = adapt(*args, "--conv_dim", 2, "--svd", "exact", *extra)
        assert code == 0, stdout
        module = read_adapter(out).modules[CONV]
        error = float((reference_delta(module, diff.shape) - diff).norm() / diff.norm())
        shown[label] = (error, printed_fit(stdout))
    default_error, default_fit = shown["default"]
    kohya_error, kohya_fit = shown["kohya"]
    assert default_error < 1e-3 and kohya_error > 0.1  # the change has rank 2: the optimum is exact
    assert kohya_fit.worst == CONV and kohya_fit.worst_error == pytest.approx(kohya_error, abs=1e-4)
    assert default_fit.worst_error < 1e-3


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
    code, _, err = adapt(
        "extract", "--model_org", tiny.single, "--model_tuned", tiny.single, "--clamp_quantile", 0, "--save_to", out
    )
    assert code == 2 and "--clamp_quantile: '0' is out of range; expected a value > 0 and <= 1" in error_line(err)
    assert not out.exists()


def test_non_finite_weights_are_refused_naming_the_layer(tiny: TinyFiles) -> None:
    tuned = build_tiny_model()
    target = next(t for t in targets(tuned) if t.name == CONV)
    with torch.no_grad():
        layer_weight(target.layer)[0, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=f"^{CONV}: the weights differ by NaN or infinite values"):
        extract_modules(tuned.family, tiny.model.components, tuned.components, dim=2, conv_dim=2)
