"""The contract suite over every registered adapter type, on Linear, 1x1 and 3x3 layers."""

from __future__ import annotations

import pytest
import torch

from adapters_core.plugins import get_registry
from adapters_core.testing import CHECKS, ContractSkip, contract_cases, run_contract

CASES = list(contract_cases())


@pytest.mark.parametrize(
    ("network", "check", "case", "dtype"),
    CASES,
    ids=[f"{n}-{c}-{case.kind}-{str(d).removeprefix('torch.')}" for n, c, case, d in CASES],
)
def test_contract(network, check, case, dtype):
    try:
        CHECKS[check](network, case, dtype, get_registry())
    except ContractSkip as skip:
        pytest.skip(str(skip))


def test_builtin_types_adapt_every_layer_kind():
    """LierLa, C3Lier and DyLoRA all adapt 3x3 convs when conv_dim is given: nothing is skipped."""
    for network in ("lora", "c3lier", "dylora"):
        results = run_contract(network)
        assert all(value == "passed" for value in results.values()), results
        assert len(results) == len(CHECKS) * 4 * 2


def test_contract_detects_a_broken_delta(monkeypatch):
    """The suite can fail: a delta_weight that ignores alpha is caught."""
    from adapt_lora import math as lora_math  # the hooks look the function up when they run

    original = lora_math.lora_delta
    monkeypatch.setattr(lora_math, "lora_delta", lambda up, down, alpha, shape: original(up, down, None, shape))
    with pytest.raises(AssertionError, match="patched forward vs base \\+ delta"):
        CHECKS["forward_matches_delta"]("lora", next(c for c in CASES if c[0] == "lora")[2], torch.float32, get_registry())
