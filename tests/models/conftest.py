"""Shared fixtures: the tiny model, written once per test module."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from adapters_core.models import SDModel, build_tiny_model, write_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> SDModel:
    return build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as a Diffusers folder and as an LDM ``.safetensors`` single file."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_model(root / "diffusers", seed=0, single_file=root / "tiny.safetensors")
    return {"diffusers": root / "diffusers", "single": root / "tiny.safetensors"}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def assert_same_state() -> Callable[[torch.nn.Module, torch.nn.Module], None]:
    """Checks that two modules have bitwise-equal state dicts (keys, dtypes, values)."""
    return _assert_same_state
