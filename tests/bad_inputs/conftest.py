"""Fixtures of the bad-input suite: one session folder of broken inputs, built once."""

from __future__ import annotations

import builtins
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from bad_input_table import Inputs
from helpers import randomize
from PIL import Image

from adapters_core.formats import save_adapter
from adapters_core.models import build_tiny_model, write_tiny_model
from adapters_core.network import Network
from adapters_core.train.dataset import write_demo_dataset


class RunsCode:
    """A pickled object whose loading would create ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (self.marker, "w"))


def _lora_tensors(dim: int = 4, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    model = build_tiny_model()
    network = Network.create(
        "lora", unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": dim, "network_alpha": alpha}
    )
    randomize(network, std=0.1)
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


def _first(tensors: dict[str, torch.Tensor], suffix: str) -> str:
    return next(key for key in sorted(tensors) if key.endswith(suffix))


def _write_raw(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Bypass adapt's writer (which refuses NaN): the broken file a third-party tool might write."""
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _broken_adapters(root: Path, good: dict[str, torch.Tensor]) -> None:
    nan, inf, nan_alpha = dict(good), dict(good), dict(good)
    up = _first(good, ".lora_up.weight")
    nan[up] = good[up].clone()
    nan[up][0, 0] = float("nan")
    down = _first(good, ".lora_down.weight")
    inf[down] = good[down].clone()
    inf[down][0, 0] = float("inf")
    nan_alpha[_first(good, ".alpha")] = torch.tensor(float("nan"))
    vector = dict(good)
    vector[_first(good, ".alpha")] = torch.full((4,), 2.0)
    huge = {k: (torch.tensor(1e30) if k.endswith(".alpha") else v) for k, v in good.items()}
    other = {  # the same module names, made for a model whose layers are 8 features wider
        k: (torch.randn(v.shape[0], v.shape[1] + 8, *v.shape[2:]) * 0.1 if k.endswith("lora_down.weight") else v)
        for k, v in good.items()
    }
    unmatched = dict(good)
    unmatched["lora_unet_no_such_block_proj.lora_down.weight"] = torch.zeros(4, 32)
    unmatched["lora_unet_no_such_block_proj.lora_up.weight"] = torch.zeros(32, 4)
    for name, tensors in [("nan", nan), ("inf", inf), ("nan_alpha", nan_alpha), ("vector_alpha", vector),
                          ("huge_alpha", huge), ("other_model", other), ("unmatched", unmatched)]:
        _write_raw(root / f"{name}.safetensors", tensors)


def _broken_containers(root: Path, good: dict[str, torch.Tensor], marker: Path) -> None:
    data = (root / "lora.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "empty.safetensors").write_bytes(b"")
    (root / "corrupt_header.safetensors").write_bytes(struct.pack("<Q", 20) + b'{"a": [1, 2,}}}}}}}}}' + data[28:200])
    (root / "huge_header.safetensors").write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    torch.save(good, root / "lora.ckpt")
    ckpt = (root / "lora.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    torch.save({"state_dict": RunsCode(marker)}, root / "evil.ckpt")  # zip container, like torch.save
    (root / "evil.pt").write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}))  # a bare pickle
    (root / "notes.txt").write_text("not a model\n")
    (root / "a_folder").mkdir()


def _text_files(root: Path) -> None:
    (root / "not_utf8.toml").write_bytes(b'[general]\ncaption_extension = ".txt" # caf\xe9 \xff\n')
    (root / "not_toml.toml").write_text("[general\nresolution = \n")
    (root / "negative_lr.toml").write_text("learning_rate = -0.001\n")
    (root / "negative_dim.toml").write_text("network_dim = -4\n")
    (root / "nan_lr.toml").write_text("learning_rate = nan\n")
    (root / "prompts_not_utf8.txt").write_bytes(b"a caf\xe9 --n ugly\n")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("bad_inputs")
    marker = tmp_path_factory.mktemp("pickle_marker") / "code_ran"
    write_tiny_model(root / "model", single_file=root / "tiny.safetensors")
    write_demo_dataset(root / "data", n_images=2, size=32, seed=0)
    (root / "images").mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "images" / "red.png")
    noise = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (256, 256, 3), generator=noise, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(root / "images" / "noise.png")  # outputs larger than a full disk's room
    good = _lora_tensors()
    save_adapter(root / "lora.safetensors", good, metadata={"ss_network_module": "networks.lora"})
    _broken_adapters(root, good)
    _broken_containers(root, good, marker)
    _text_files(root)
    return Inputs(root, marker)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads; on a shared 2-core machine they only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
