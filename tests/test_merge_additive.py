"""``merge_additive``, the core's merge of an additive type, on plain tensors; and the
registry's promise that a delta is the caller's to overwrite."""

from __future__ import annotations

import pytest
import torch

from adapters_core.module import merge_additive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("ratio", [1.0, 0.7, -0.35])
def test_writing_into_the_delta_gives_the_same_bits(dtype: torch.dtype, ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(96, 80, generator=g) * 0.05).to(dtype)
    delta = torch.randn(96, 80, generator=g) * 1e-3
    expected = (weight.to(torch.float64) + ratio * delta.to(torch.float64)).to(torch.float32)  # the formula, wider
    kept = delta.clone()
    plain = merge_additive(weight, delta, ratio)
    assert torch.equal(delta, kept)  # not the caller's scratch: untouched
    scratch = merge_additive(weight, delta, ratio, scratch=True)
    assert scratch.dtype == dtype and torch.equal(scratch, plain)
    assert torch.allclose(plain.float(), expected.to(dtype).float(), rtol=1e-2, atol=1e-6)


def test_a_delta_of_another_shape_but_the_same_size_is_reshaped() -> None:
    weight = torch.zeros(4, 6, 1, 1)
    assert torch.equal(merge_additive(weight, torch.ones(4, 6), 2.0, scratch=True), torch.full((4, 6, 1, 1), 2.0))


def test_a_delta_that_views_the_modules_tensors_is_copied_before_anyone_writes_into_it(fake_entry_points) -> None:
    registry = fake_entry_points({"fulldelta": "fake_plugins:fulldelta"})
    diff = torch.randn(4, 3)
    kept = diff.clone()
    delta = registry.delta_weight("fulldelta", {"diff": diff}, torch.Size((4, 3)))  # the plugin returns diff itself
    delta.add_(1.0)
    assert torch.equal(diff, kept)
    lora = {"lora_down.weight": torch.ones(2, 3), "lora_up.weight": torch.ones(4, 2), "alpha": torch.tensor(2.0)}
    merged = registry.merge_weights("lora", lora, torch.zeros(4, 3), 1.0)  # the core default, writing into the delta
    assert torch.equal(merged, torch.full((4, 3), 2.0))
