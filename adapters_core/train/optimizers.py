"""``--optimizer_type`` and ``--optimizer_args``, with kohya's names and defaults.

AdamW (default), SGDNesterov (momentum 0.9 unless given) and Lion (below) need only torch;
Adafactor comes from transformers; the 8-bit and paged variants from bitsandbytes;
DAdapt*/Prodigy from their packages; any other ``package.Class`` is imported as is.
"""

from __future__ import annotations

import ast
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from adapters_core.errors import ConfigError

log = logging.getLogger(__name__)

# lower-case kohya name -> bitsandbytes class name
BNB_OPTIMIZERS = {
    "adamw8bit": "AdamW8bit",
    "lion8bit": "Lion8bit",
    "sgdnesterov8bit": "SGD8bit",
    "pagedadamw8bit": "PagedAdamW8bit",
    "pagedadamw": "PagedAdamW",
    "pagedadamw32bit": "PagedAdamW32bit",
    "pagedlion8bit": "PagedLion8bit",
}
DADAPT_OPTIMIZERS = {
    "dadaptation": "DAdaptAdamPreprint",
    "dadaptadampreprint": "DAdaptAdamPreprint",
    "dadaptadagrad": "DAdaptAdaGrad",
    "dadaptadam": "DAdaptAdam",
    "dadaptadan": "DAdaptAdan",
    "dadaptadanip": "DAdaptAdanIP",
    "dadaptlion": "DAdaptLion",
    "dadaptsgd": "DAdaptSGD",
}


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    update = sign(b1 * m + (1 - b1) * g); p <- p * (1 - lr * wd) - lr * update;
    m <- b2 * m + (1 - b2) * g. Use a learning rate 3-10x smaller than AdamW's.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ConfigError(f"Lion: invalid lr {lr} or betas {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                momentum = self.state[param].setdefault("exp_avg", torch.zeros_like(param))
                if group["weight_decay"]:
                    param.mul_(1.0 - group["lr"] * group["weight_decay"])
                update = momentum.mul(beta1).add_(param.grad, alpha=1.0 - beta1).sign_()
                param.add_(update, alpha=-group["lr"])
                momentum.mul_(beta2).add_(param.grad, alpha=1.0 - beta2)
        return loss


def parse_optimizer_args(items: Iterable[str], flag: str = "--optimizer_args") -> dict[str, Any]:
    """``["weight_decay=0.01", "betas=(0.9,0.99)"]`` -> typed values (Python literals)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: '{item}' is not of the form key=value")
        try:
            parsed[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"{flag} {item}: the value must be a Python literal (number, True, (0.9, 0.99), 'text')"
            ) from None
    return parsed


@dataclass
class OptimizerChoice:
    """The built optimizer, its kohya-style description, and a scheduler it forces (Adafactor)."""

    optimizer: Optimizer
    description: str
    forced_scheduler: str | None = None


def resolve_optimizer_name(optimizer_type: str, use_8bit_adam: bool, use_lion_optimizer: bool) -> str:
    """kohya's legacy flags map to names; the default is AdamW."""
    if use_8bit_adam or use_lion_optimizer:
        if optimizer_type or (use_8bit_adam and use_lion_optimizer):
            raise ConfigError("--use_8bit_adam/--use_lion_optimizer: give only one of them and no --optimizer_type")
        return "AdamW8bit" if use_8bit_adam else "Lion"
    return optimizer_type or "AdamW"


def _import(module: str, install: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--optimizer_type {name}: install {install}: pip install {install}") from None


def _optimizer_class(name: str) -> type[Optimizer]:
    key = name.lower()
    if key == "adamw":
        return torch.optim.AdamW
    if key == "lion":
        return Lion
    if key == "sgdnesterov":
        return torch.optim.SGD
    if key == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    if key in BNB_OPTIMIZERS:
        return getattr(_import("bitsandbytes", "bitsandbytes", name).optim, BNB_OPTIMIZERS[key])
    if key in DADAPT_OPTIMIZERS:
        return getattr(_import("dadaptation", "dadaptation", name), DADAPT_OPTIMIZERS[key])
    if key == "prodigy":
        return _import("prodigyopt", "prodigyopt", name).Prodigy
    if "." in name:
        module_name, _, class_name = name.rpartition(".")
        module = _import(module_name, module_name.split(".")[0], name)
        found = getattr(module, class_name, None)
        if isinstance(found, type):
            return found
        raise ConfigError(f"--optimizer_type {name}: {module_name} has no class {class_name}")
    raise ConfigError(
        f"--optimizer_type {name}: unknown; expected AdamW, AdamW8bit, Lion, Lion8bit, SGDNesterov, SGDNesterov8bit, "
        "PagedAdamW8bit, Adafactor, DAdaptAdam, Prodigy, ... or package.Class"
    )


def has_float16_params(param_groups: list[dict[str, Any]]) -> bool:
    return any(param.dtype == torch.float16 for group in param_groups for param in group["params"])


def build_optimizer(
    name: str, param_groups: list[dict[str, Any]], learning_rate: float, optimizer_args: Mapping[str, Any]
) -> OptimizerChoice:
    """The optimizer for ``param_groups`` (each with its own ``lr``), configured as kohya does."""
    cls = _optimizer_class(name)
    kwargs = dict(optimizer_args)
    key = name.lower()
    lr: float | None = learning_rate
    forced = None
    fixed: dict[str, Any] = {}
    if key in ("sgdnesterov", "sgdnesterov8bit"):
        kwargs.setdefault("momentum", 0.9)
        fixed["nesterov"] = True
    if key == "adamw" and "fused" not in kwargs and has_float16_params(param_groups):
        # --full_fp16: unfused AdamW computes in float16, where its eps (1e-8) is 0, so a zero
        # gradient (every lora_down at the first step) gives 0/0 = NaN; the fused kernel
        # computes in float32 and stores float16.
        fixed["fused"] = True
    if key == "adafactor":
        kwargs.setdefault("relative_step", True)
        if kwargs.get("warmup_init") and not kwargs["relative_step"]:
            kwargs["relative_step"] = True
        if kwargs["relative_step"]:
            # Adafactor picks its own step size; the lr seeds its "adafactor" scheduler.
            if any(group.pop("lr", None) is not None for group in param_groups):
                log.warning("Adafactor with relative_step: --unet_lr/--text_encoder_lr/block lr are ignored")
            forced, lr = f"adafactor:{learning_rate}", None
    make: Callable[..., Optimizer] = cls  # each class takes (params, lr, its own options), not Optimizer's
    try:
        optimizer = make(param_groups, lr=lr, **fixed, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"--optimizer_args for {name}: {exc}") from None
    description = f"{cls.__module__}.{cls.__name__}"
    if kwargs:
        description += "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return OptimizerChoice(optimizer, description, forced)
