"""The base class of adapter modules and the small helpers every type shares."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from adapters_core.errors import ShapeMismatchError


class AdapterModule(nn.Module):
    """One adapter attached to one layer.

    ``forward(x, base)`` receives the layer's input and its original output and returns the
    adapted output. The core owns patching; a module only computes. ``multiplier`` is set
    by :meth:`adapters_core.network.Network.set_multiplier`.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.lora_name = name
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_step(self, step: int) -> None:
        """Called before each training forward pass (DyLoRA samples its rank unit here).

        Runs on every process with the same seed, module after module in the network's
        order; a module that draws random numbers must draw them from torch's global
        generator so that every process makes the same choice.
        """


def merge_additive(weight: torch.Tensor, delta: torch.Tensor, ratio: float, *, scratch: bool = False) -> torch.Tensor:
    """``weight + ratio * delta`` computed in float32 and returned in the weight's dtype.

    ``scratch=True``: ``delta`` is the caller's to overwrite, and the float32 sum is written
    into it (one buffer the size of the layer fewer; the same values: a weight of at most 32
    bits widens to float32 exactly, inside the add as before it).
    """
    if delta.shape != weight.shape:
        if delta.numel() != weight.numel():
            raise ShapeMismatchError(
                f"delta of shape {tuple(delta.shape)} does not fit a weight of shape {tuple(weight.shape)}"
            )
        delta = delta.reshape(weight.shape)
    delta = delta.to(weight.device, torch.float32)
    if scratch and weight.is_floating_point() and weight.dtype.itemsize <= 4:
        merged = torch.add(weight, delta, alpha=ratio, out=delta)
    else:
        merged = torch.add(weight.float(), delta, alpha=ratio)
    return merged.to(weight.dtype)


def fit_tensor(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reshape a file tensor to a parameter's shape where only trailing 1x1 dims differ.

    SD2 checkpoints converted with convolutional ``proj_in``/``proj_out`` give 4-D
    ``[r, in, 1, 1]`` LoRA weights for layers that are ``Linear`` in a diffusers U-Net (and
    the other way round); both must load.
    """
    if tensor.shape == shape:
        return tensor
    squeezed_file = [d for d in tensor.shape]
    while len(squeezed_file) > 2 and squeezed_file[-1] == 1:
        squeezed_file.pop()
    squeezed_param = [d for d in shape]
    while len(squeezed_param) > 2 and squeezed_param[-1] == 1:
        squeezed_param.pop()
    if squeezed_file != squeezed_param:
        raise ShapeMismatchError(
            f"{name}: file tensor has shape {tuple(tensor.shape)}, the layer needs {tuple(shape)} "
            "(was this adapter trained for another base model or with another rank?)"
        )
    return tensor.reshape(shape)


def load_module_tensors(module: nn.Module, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy module-relative ``tensors`` into ``module``'s parameters and buffers, exactly.

    A missing buffer (a LoRA file without ``alpha``) keeps the value the module was created
    with; a missing parameter is an error.
    """
    own = dict(module.state_dict())
    parameters = {key for key, _ in module.named_parameters()}
    missing = sorted(key for key in parameters if key not in tensors)
    if missing:
        raise ShapeMismatchError(f"{name}: file lacks {', '.join(missing)}")
    fitted = dict(own)
    for key, target in own.items():
        if key in tensors:
            fitted[key] = fit_tensor(f"{name}.{key}", tensors[key], target.shape).to(target.dtype)
    module.load_state_dict(fitted, strict=True)
