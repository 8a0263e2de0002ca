"""``--lr_scheduler``: the learning-rate schedules kohya offers, with its warm-up conventions.

The diffusers schedules (constant, constant_with_warmup, linear, cosine, cosine_with_restarts,
polynomial, piecewise_constant) come from ``diffusers.optimization.get_scheduler``; kohya's
newer ones (inverse_sqrt, cosine_with_min_lr, warmup_stable_decay) and Adafactor's own
schedule from transformers; ``--lr_scheduler_type`` names any scheduler class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.optimization import SchedulerType, get_scheduler
from torch.optim import Optimizer

from adapters_core.errors import ConfigError

TRANSFORMERS_SCHEDULES = ("inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
DIFFUSERS_SCHEDULES = tuple(s.value for s in SchedulerType)


def steps_of(value: int | float, total: int) -> int:
    """kohya's int-or-ratio step counts: a float (0.1) is a fraction of ``total``."""
    return int(value * total) if isinstance(value, float) else int(value)


@dataclass
class ScheduleSpec:
    """What the schedule needs; ``total_steps`` counts scheduler steps over the whole run."""

    name: str
    total_steps: int
    warmup_steps: int | float = 0
    decay_steps: int | float = 0
    num_cycles: int = 1
    power: float = 1.0
    timescale: int | None = None
    min_lr_ratio: float | None = None
    scheduler_type: str = ""
    scheduler_args: Mapping[str, Any] | None = None


def _class_schedule(optimizer: Optimizer, spec: ScheduleSpec, warmup: int) -> Any:
    if warmup:
        raise ConfigError(f"--lr_scheduler_type {spec.scheduler_type}: does not take --lr_warmup_steps; set it to 0")
    module_name, _, class_name = spec.scheduler_type.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else torch.optim.lr_scheduler
    except ImportError:
        raise ConfigError(f"--lr_scheduler_type {spec.scheduler_type}: cannot import {module_name}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"--lr_scheduler_type {spec.scheduler_type}: no such scheduler class")
    try:
        return cls(optimizer, **dict(spec.scheduler_args or {}))
    except TypeError as exc:
        raise ConfigError(f"--lr_scheduler_args for {spec.scheduler_type}: {exc}") from None


def build_lr_scheduler(optimizer: Optimizer, spec: ScheduleSpec) -> Any:
    """The scheduler; errors name the flag (unknown name, warm-up where none is taken)."""
    total = spec.total_steps
    warmup = steps_of(spec.warmup_steps, total)
    kwargs = dict(spec.scheduler_args or {})
    if spec.scheduler_type:
        return _class_schedule(optimizer, spec, warmup)
    name = spec.name
    if name.startswith("adafactor"):
        from transformers.optimization import Adafactor, AdafactorSchedule

        if not isinstance(optimizer, Adafactor):
            raise ConfigError("--lr_scheduler adafactor: needs --optimizer_type Adafactor")
        initial_lr = float(name.split(":", 1)[1]) if ":" in name else 0.0
        return AdafactorSchedule(optimizer, initial_lr)
    if name == "constant" and warmup:
        raise ConfigError("--lr_scheduler constant: does not take --lr_warmup_steps; use constant_with_warmup")
    if name in TRANSFORMERS_SCHEDULES:
        import transformers.optimization as tf

        if name == "inverse_sqrt":
            return tf.get_inverse_sqrt_schedule(optimizer, warmup, timescale=spec.timescale, **kwargs)
        if name == "cosine_with_min_lr":
            return tf.get_cosine_with_min_lr_schedule_with_warmup(
                optimizer, warmup, total, num_cycles=spec.num_cycles / 2, min_lr_rate=spec.min_lr_ratio, **kwargs
            )
        decay = steps_of(spec.decay_steps, total)
        return tf.get_wsd_schedule(
            optimizer,
            warmup,
            decay,
            num_stable_steps=total - warmup - decay,
            num_cycles=spec.num_cycles / 2,
            min_lr_ratio=spec.min_lr_ratio or 0.0,
            **kwargs,
        )
    if name not in DIFFUSERS_SCHEDULES:
        known = ", ".join((*DIFFUSERS_SCHEDULES, *TRANSFORMERS_SCHEDULES, "adafactor"))
        raise ConfigError(f"--lr_scheduler {name}: unknown; expected one of {known}")
    if name == "piecewise_constant":
        return get_scheduler(name, optimizer, step_rules=kwargs.get("step_rules"))
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=spec.num_cycles, power=spec.power
    )
