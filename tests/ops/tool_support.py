"""Shared helpers of the adapter-tool tests (merge, svd-merge, extract, DyLoRA split, resize,
inspect): the tiny model on disk, random adapters, the reference formulas written out
independently of the code under test, a test-only adapter type that stores whole deltas
(not factor-based), and a runner for the ``adapt`` CLI. No tests here."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapt_cli.commands.extract import extract  # noqa: E402
from adapt_cli.commands.inspect import inspect  # noqa: E402
from adapt_cli.commands.merge import merge  # noqa: E402
from adapt_cli.commands.resize import resize  # noqa: E402
from adapt_cli.commands.svd_merge import svd_merge  # noqa: E402
from adapters_core.formats import save_adapter  # noqa: E402
from adapters_core.models import SDModel, build_tiny_model, write_tiny_model  # noqa: E402
from adapters_core.module import AdapterModule  # noqa: E402
from adapters_core.network import resolve_model  # noqa: E402
from adapters_core.plugins import LoadedPlugin, get_registry, hookimpl, reset_registry  # noqa: E402
from adapters_core.targets import Target, layer_weight, model_targets  # noqa: E402
from adapters_core.types import ModuleSpec, NetworkType  # noqa: E402

TOOL_COMMANDS = (merge, svd_merge, extract, resize, inspect)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's matrices are far too small to gain from threads, and on a shared
    2-core machine every parallel region can wait a scheduler tick for its second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class TinyFiles:
    folder: Path  # Diffusers folder
    single: Path  # LDM single file
    model: SDModel  # the same weights in memory


def write_tiny(root: Path) -> TinyFiles:
    model = write_tiny_model(root / "tiny", single_file=root / "tiny.safetensors")
    return TinyFiles(root / "tiny", root / "tiny.safetensors", model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyFiles:
    return write_tiny(tmp_path_factory.mktemp("tiny"))


def targets(model: SDModel, conv: bool = True) -> list[Target]:
    """The adapter targets of a loaded model or a pipeline."""
    family, components = resolve_model(get_registry(), model)
    return model_targets(family, components, include_conv_blocks=conv)


def random_lora(
    model: SDModel,
    *,
    dim: int = 4,
    alpha: float | None = 2.0,
    conv_dim: int | None = None,
    conv_alpha: float | None = None,
    seed: int = 0,
    text_encoder: bool = True,
    scale: float = 0.1,
) -> dict[str, torch.Tensor]:
    """kohya-keyed tensors with random, non-zero factors on every target (3x3 convs with conv_dim)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for target in targets(model, conv=bool(conv_dim)):
        if target.component == "text_encoder" and not text_encoder:
            continue
        shape = layer_weight(target.layer).shape
        conv3x3 = target.layer_kind == "conv3x3"
        rank = conv_dim if conv3x3 else dim
        assert rank is not None
        tensors[f"{target.name}.lora_down.weight"] = torch.randn(rank, *shape[1:], generator=generator) * scale
        up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
        tensors[f"{target.name}.lora_up.weight"] = torch.randn(*up_shape, generator=generator) * scale
        value = conv_alpha if conv3x3 else alpha
        if value is not None:
            tensors[f"{target.name}.alpha"] = torch.tensor(float(value))
    return tensors


def write_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    save_adapter(path, tensors, metadata=metadata or {})
    return path


def modules_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        grouped.setdefault(name, {})[rest] = value
    return grouped


def reference_delta(module: Mapping[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """kohya-format.md §1 written out: (alpha/r) * up @ down, 3x3 as the sum over the rank."""
    down = module["lora_down.weight"].double()
    up = module["lora_up.weight"].double()
    rank = down.shape[0]
    alpha = float(module["alpha"]) if "alpha" in module else float(rank)
    scale = (alpha or rank) / rank
    if down.dim() == 4 and down.shape[2:] != (1, 1):
        delta = torch.einsum("or,rikl->oikl", up.reshape(up.shape[0], rank), down)
    else:
        delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (scale * delta).reshape(shape)


def layer_weights(model: SDModel) -> dict[str, torch.Tensor]:
    return {t.name: layer_weight(t.layer).detach().double() for t in targets(model)}


def truncation_error(matrix: torch.Tensor, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation (Eckart-Young)."""
    s = torch.linalg.svdvals(matrix.reshape(matrix.shape[0], -1).double())
    return float(s[rank:].pow(2).sum().sqrt())


# -- a test type that stores whole deltas: not factor-based ---------------------------------
FULLDELTA = NetworkType(name="fulldelta", description="test type: the delta itself", kohya_module="tests.fulldelta")


class FullDeltaModule(AdapterModule):
    """The delta itself as a parameter (zeros at init), applied through the layer's own operation."""

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec.name)
        weight = layer_weight(spec.layer)
        self.weight_shape = weight.shape
        self.conv = isinstance(spec.layer, torch.nn.Conv2d)
        self.conv_args = (spec.layer.stride, spec.layer.padding) if self.conv else ()
        self.diff = torch.nn.Parameter(torch.zeros(weight.shape[0], weight[0].numel(), device=weight.device))
        self.register_buffer("rank", torch.tensor(float(spec.rank)))

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        weight = (self.diff.reshape(self.weight_shape) * self.multiplier).to(x.dtype)
        out = torch.nn.functional.conv2d(x, weight, None, *self.conv_args) if self.conv else x @ weight.T
        return base + out.to(base.dtype)


class FullDeltaPlugin:
    """Module tensors ``diff`` (the delta, [out, in*kh*kw]) and ``rank`` (0-d)."""

    @hookimpl
    def register_networks(self, register: Callable[[NetworkType], None]) -> None:
        register(FULLDELTA)

    @hookimpl
    def create_module(self, spec: ModuleSpec) -> AdapterModule:
        return FullDeltaModule(spec)

    @hookimpl
    def state_dict_keys(self, spec: ModuleSpec) -> list[str]:
        return ["diff", "rank"]

    @hookimpl
    def delta_weight(self, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size) -> torch.Tensor:
        return tensors["diff"].float().reshape(weight_shape)

    @hookimpl
    def extract(self, delta: torch.Tensor, rank: int, options: Mapping[str, object]) -> dict:
        matrix = delta.reshape(delta.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        k = min(rank, s.shape[0])
        return {"diff": (u[:, :k] * s[:k]) @ vh[:k], "rank": torch.tensor(float(k))}

    @hookimpl
    def module_options_from_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> dict | None:
        return {"dim": int(tensors["rank"]), "alpha": float(tensors["rank"])}

    @hookimpl
    def detect_network(self, keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
        return FULLDELTA.name if any(key.endswith(".diff") for key in keys) else None


@pytest.fixture
def fulldelta() -> Iterator[str]:
    """Install the test type for one test."""
    reset_registry()
    get_registry().add_plugin(FullDeltaPlugin(), LoadedPlugin("fulldelta", "tests", "adapt-tests", "0"))
    yield FULLDELTA.name
    reset_registry()


def fulldelta_tensors(model: SDModel, *, rank: int = 3, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A fulldelta file: a random rank-``rank`` delta on every Linear/1x1 target."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for target in targets(model, conv=False):
        shape = layer_weight(target.layer).shape
        n = torch.Size(shape[1:]).numel()
        diff = (torch.randn(shape[0], rank, generator=generator) @ torch.randn(rank, n, generator=generator)) * scale
        tensors[f"{target.name}.diff"] = diff
        tensors[f"{target.name}.rank"] = torch.tensor(float(rank))
    return tensors


# -- the CLI ----------------------------------------------------------------------------------
@pytest.fixture
def adapt(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``adapt(*args) -> (exit code, stdout, stderr)`` through ``adapt_cli.main.main`` with the tool
    commands registered (the lead registers them in adapt_cli/commands/__init__.py)."""
    from adapt_cli.main import cli, main

    for command in TOOL_COMMANDS:
        assert command.name is not None
        monkeypatch.setitem(cli.commands, command.name, command)

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def error_line(stderr: str) -> str:
    """The ``adapt: error:`` line (progress bars may precede it on stderr)."""
    lines = [line for line in stderr.splitlines() if line.startswith("adapt: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


__all__ = [
    "FullDeltaPlugin",
    "TinyFiles",
    "adapt",
    "build_tiny_model",
    "error_line",
    "fulldelta",
    "fulldelta_tensors",
    "layer_weights",
    "modules_of",
    "one_thread",
    "random_lora",
    "reference_delta",
    "targets",
    "tiny",
    "truncation_error",
    "write_file",
    "write_tiny",
]
