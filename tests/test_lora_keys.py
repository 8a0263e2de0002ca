"""kohya's alpha rule (None or 0 means alpha = rank), in its one home and as every reader applies it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from adapters_core.interop.lora_set import module_tensors
from adapters_core.lora_keys import ALPHA, DOWN, UP, resolve_alpha
from adapters_core.ops.factors import factors_of
from adapters_core.plugins import get_registry
from adapters_core.types import ModuleSpec


@pytest.mark.parametrize(
    ("alpha", "rank", "expected"),
    [(None, 4, 4.0), (0, 4, 4.0), (0.0, 8, 8.0), (torch.tensor(0.0), 3, 3.0), (torch.tensor(2.5), 4, 2.5), (1, 16, 1.0),
     (-1.0, 4, -1.0)],
)
def test_missing_or_zero_alpha_means_the_rank(alpha, rank, expected):
    assert resolve_alpha(alpha, rank) == expected


def test_the_rule_needs_no_torch():
    code = "import sys, adapters_core.lora_keys as k; assert 'torch' not in sys.modules; print(k.resolve_alpha(None, 3))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "3.0"


@pytest.mark.parametrize("stored", [None, 0.0, 2.0])
def test_every_reader_of_lora_tensors_agrees(stored):
    """The plugin's options, the module it builds, the factor view and the set writer give one alpha."""
    torch.manual_seed(0)
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    tensors = {DOWN: down, UP: up} if stored is None else {DOWN: down, UP: up, ALPHA: torch.tensor(stored)}
    expected = 4.0 if not stored else stored
    registry = get_registry()
    options = registry.module_options_from_tensors("lora", "m", tensors)
    assert options == {"dim": 4, "alpha": expected}
    spec = ModuleSpec("m", nn.Linear(6, 5), options["dim"], options["alpha"], 0, "linear", False)
    module = registry.create_module("lora", spec)
    assert module is not None
    assert float(module.alpha) == expected
    assert factors_of("lora", tensors).alpha == expected
    assert float(module_tensors(down, up, stored)[ALPHA]) == expected
    delta = registry.delta_weight("lora", tensors, torch.Size((5, 6)))
    torch.testing.assert_close(delta, up @ down * (expected / 4))
