"""Attach adapter modules to layers by wrapping their ``forward`` (kohya's approach).

The module tree of the base model is left unchanged: its ``state_dict`` keys stay those of
the checkpoint. Each adapted layer gets one wrapper that runs the original forward and then
every attached adapter in order, so several networks stack on the same layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapters_core.module import AdapterModule

_MODULES = "_adapt_modules"
_ORIGINAL = "_adapt_original_forward"


def attach(layer: nn.Module, module: AdapterModule) -> None:
    attached: list[AdapterModule] | None = layer.__dict__.get(_MODULES)
    if attached is None:
        original = layer.forward
        attached = []

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(x, *args, **kwargs)
            for adapter in attached:
                out = adapter(x, out)
            return out

        layer.__dict__[_MODULES] = attached
        layer.__dict__[_ORIGINAL] = original
        layer.forward = forward
    if any(existing is module for existing in attached):
        return
    attached.append(module)


def detach(layer: nn.Module, module: AdapterModule) -> None:
    attached: list[AdapterModule] | None = layer.__dict__.get(_MODULES)
    if attached is None:
        return
    attached[:] = [existing for existing in attached if existing is not module]
    if not attached:
        original = layer.__dict__.pop(_ORIGINAL)
        del layer.__dict__[_MODULES]
        if getattr(original, "__self__", None) is layer and original.__func__ is type(layer).forward:
            del layer.__dict__["forward"]
        else:
            layer.forward = original


def attached_modules(layer: nn.Module) -> list[AdapterModule]:
    return list(layer.__dict__.get(_MODULES, ()))
