"""Pipelines and schedulers from an SDModel, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ConfigMixin, StableDiffusionPipeline

from adapters_core.errors import ConfigError, ModelLoadError
from adapters_core.models import SDModel, load_sd_model, save_diffusers, to_pipeline
from adapters_core.models.pipeline import SCHEDULERS, make_scheduler


def _generate(model: SDModel, scheduler: str = "ddim") -> np.ndarray:
    pipe = to_pipeline(model, scheduler)
    result = pipe(
        "a photo of sks dog",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    images: np.ndarray = result.images
    return images


def test_tiny_pipeline_generates_an_image(tiny_files: dict[str, Path]) -> None:
    model = load_sd_model(tiny_files["single"])
    images = _generate(model)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert np.array_equal(images, _generate(load_sd_model(tiny_files["diffusers"])))


def test_every_scheduler_runs_or_says_what_it_needs(tiny: SDModel) -> None:
    for name in SCHEDULERS:
        try:
            scheduler = make_scheduler(tiny.noise_scheduler_config, name, v_parameterization=True)
        except ConfigError as error:
            assert name == "lms" and "scipy" in str(error)
            continue
        assert isinstance(scheduler, ConfigMixin) and scheduler.config["prediction_type"] == "v_prediction"
        assert _generate(tiny, name).shape == (1, 32, 32, 3)
    with pytest.raises(ConfigError, match="scheduler 'k_euler': expected one of ddim"):
        to_pipeline(tiny, "k_euler")


def test_saved_folder_loads_in_diffusers(tiny: SDModel, tmp_path: Path) -> None:
    folder = save_diffusers(tiny, tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.safety_checker is None and type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_pipeline_needs_a_tokenizer(tiny_files: dict[str, Path]) -> None:
    model = load_sd_model(tiny_files["single"])
    model.tokenizers["text_encoder"] = None
    with pytest.raises(ModelLoadError, match="loaded without a tokenizer"):
        to_pipeline(model)
