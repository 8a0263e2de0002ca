"""The one test for NaN/inf before a tensor is saved, merged or used."""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (tensors of integers always are).

    One reduction that writes nothing as large as the tensor: NaN propagates through the
    minimum and maximum, and an infinity is one of them (``isfinite(t).all()`` first writes a
    mask of ``t``'s size; a float32 sum is slower on half precision). 8-bit floats, which
    torch cannot reduce, are widened first.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if tensor.element_size() == 1:
        tensor = tensor.to(torch.float16)  # exact: every float8 value is a float16 value
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))
