"""Shared helpers of the ``adapt train`` tests: a tiny workspace and a way to run the CLI.

Imported by the test modules (``from train_fixtures import ...``, fixtures included, so that
pytest sees them there); the workspace is session-scoped so the tiny model and demo images are
written once.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner, Result  # noqa: E402

from adapt_cli import main as cli_main  # noqa: E402
from adapt_cli.commands.train import train  # noqa: E402
from adapters_core.models import write_tiny_model  # noqa: E402
from adapters_core.train.dataset import write_demo_dataset  # noqa: E402


@dataclass(frozen=True)
class Workspace:
    root: Path
    model: Path  # Diffusers folder
    single_file: Path  # LDM .safetensors
    train_dir: Path  # folder with "<repeats>_<tokens>" subfolders: 4 images x 10 repeats
    reg_dir: Path  # 2 images x 1 repeat
    small_dir: Path  # the same 4 images x 1 repeat (epochs of few steps)


@pytest.fixture(name="one_thread", autouse=True)
def one_thread_fixture() -> Iterator[None]:
    """One torch thread per test: the tiny model's operations gain little from a second thread,
    and on a 2-core machine shared with another job two threads run 10-30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", name="workspace")
def workspace_fixture(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("train_ws")
    write_tiny_model(root / "model", seed=0, single_file=root / "tiny.safetensors")
    train_dir = write_demo_dataset(root / "data", n_images=4, size=32, seed=0)
    reg = write_demo_dataset(root / "reg", n_images=2, size=32, seed=1)
    (reg / "10_sks shape").rename(reg / "1_shape")
    small = root / "small"
    shutil.copytree(train_dir / "10_sks shape", small / "1_sks shape")
    return Workspace(root, root / "model", root / "tiny.safetensors", train_dir, reg, small)


def copy_data(workspace: Workspace, target: Path) -> Path:
    """A private copy of the training folder (for tests that write cache files next to images)."""
    shutil.copytree(workspace.train_dir, target)
    return target


def base_args(workspace: Workspace, output_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    """A fast kohya-style command line on the tiny model (batch 1, 32 px, no workers)."""
    return [
        "--pretrained_model_name_or_path",
        str(workspace.model),
        "--train_data_dir",
        str(workspace.train_dir),
        "--caption_extension",
        ".txt",
        "--resolution",
        "32",
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--learning_rate",
        "1e-3",
        "--seed",
        "42",
        "--max_data_loader_n_workers",
        "0",
        *extra,
    ]


@dataclass
class Run:
    code: int
    output: str


def run_adapt(argv: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> Run:
    """``adapt <argv>`` in-process, with the CLI's error handling (AdaptError -> exit 2)."""
    code = cli_main.main(argv)
    text = ""
    if capsys is not None:
        captured = capsys.readouterr()
        text = captured.out + captured.err
    return Run(code, text)


def invoke_train(argv: list[str]) -> Result:
    """The click command object directly (output captured by click)."""
    return CliRunner().invoke(train, argv, catch_exceptions=True)
