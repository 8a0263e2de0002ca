"""``all_finite``: the one NaN/inf test, on plain tensors of every dtype a file may hold."""

from __future__ import annotations

import pytest
import torch

from adapters_core.finite import all_finite

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_one_non_finite_value_anywhere_is_found(dtype: torch.dtype, bad: str) -> None:
    values = torch.randn(3, 70_001, generator=torch.Generator().manual_seed(0))
    assert all_finite(values.to(dtype))
    for index in [0, 131_337, values.numel() - 1]:  # first, inside the vectorised body, the scalar tail
        broken = values.clone().reshape(-1)
        broken[index] = float(bad)
        if dtype == torch.float8_e4m3fn and bad != "nan":
            continue  # e4m3fn has no infinity: casting one gives its largest value, 448
        assert not all_finite(broken.to(dtype).reshape(3, -1)), (dtype, bad, index)


def test_empty_integer_and_bool_tensors_are_finite() -> None:
    assert all_finite(torch.empty(0, 4))
    assert all_finite(torch.tensor([1, -2, 3]))
    assert all_finite(torch.tensor([True, False]))


def test_the_largest_finite_values_are_finite() -> None:
    for dtype in [torch.float16, torch.bfloat16, torch.float32]:
        info = torch.finfo(dtype)
        assert all_finite(torch.tensor([info.max, info.min, info.tiny, 0.0], dtype=dtype))
