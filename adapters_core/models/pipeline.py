"""Diffusers pipelines (the model family builds them) and inference schedulers from an :class:`SDModel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from adapters_core.errors import ConfigError, ModelLoadError
from adapters_core.models.components import SDModel

# name -> (class, extra config); the names are those of kohya's --sample_sampler where they overlap
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "lms": (LMSDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}


def make_scheduler(config: Mapping[str, Any], name: str, *, v_parameterization: bool) -> SchedulerMixin:
    """A scheduler ``name`` built ``from_config`` of a model's noise-scheduler config."""
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler {name!r}: expected one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    prediction_type = "v_prediction" if v_parameterization else "epsilon"
    try:
        return _from_config(cls, {**config, **extra, "prediction_type": prediction_type})
    except ImportError as error:  # LMS needs scipy, which adapt does not depend on
        raise ConfigError(f"scheduler {name!r}: {' '.join(str(error).split())}") from error


def scheduler_for_saving(model: SDModel) -> SchedulerMixin:
    """The scheduler class the model's config names (what a Diffusers folder should keep)."""
    class_name = model.noise_scheduler_config.get("_class_name", "DDIMScheduler")
    cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        cls = DDIMScheduler
    prediction_type = "v_prediction" if model.v_parameterization else "epsilon"
    config = {**model.noise_scheduler_config, "prediction_type": prediction_type}
    return _from_config(cls, config)


def _from_config(cls: type[SchedulerMixin], config: dict[str, Any]) -> SchedulerMixin:
    # every diffusers scheduler is also a ConfigMixin, but SchedulerMixin does not declare from_config
    scheduler: SchedulerMixin = cls.from_config(config)  # type: ignore[attr-defined]
    return scheduler


def to_pipeline(model: SDModel, scheduler_name: str = "ddim") -> Any:
    """A ready-to-run pipeline of the model's family (safety checker off) sharing its modules.

    Schedulers: ddim, pndm, euler, euler_a, dpmsolver++ (alias dpm), lms (needs scipy), ddpm, heun.
    """
    if model.tokenizer is None:
        raise ModelLoadError(
            f"{model.source}: loaded without a tokenizer; pass tokenizer_path to load_sd_model"
        )
    scheduler = make_scheduler(
        model.noise_scheduler_config, scheduler_name, v_parameterization=model.v_parameterization
    )
    pipe = model.family.build_pipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
