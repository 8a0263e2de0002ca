"""The table of the bad-input suite: what a case runs and what it must answer.

A case's ``argv`` builds the command line from a :class:`Where` (the shared inputs and the
case's own folders); ``setup`` prepares the case's folder before its snapshot is taken;
``place`` asks the runner for a read-only (``"ro"``) or nearly full (``"full"``) folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Inputs:
    """Paths of the shared inputs (never written by a case: the runner checks it)."""

    root: Path
    marker: Path  # created only if a pickle ran code

    def __truediv__(self, name: str) -> Path:
        return self.root / name


@dataclass(frozen=True)
class Where:
    i: Path  # the shared inputs (see conftest.py)
    t: Path  # the case's own folder (the working directory while it runs)

    @property
    def ro(self) -> Path:
        return self.t / "ro"

    @property
    def full(self) -> Path:
        return self.t / "full"


Argv = Callable[[Where], Sequence[object]]
Needle = str | tuple[str, ...]  # what the one stderr line must contain (every part of a tuple)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv
    needle: Needle  # a file name, a flag, a reason
    code: int = 2
    place: str | None = None  # "ro" or "full": the runner makes Where.ro / Where.full
    setup: Callable[[Where], None] | None = None
    found_by_work: bool = False  # only the work shows the fault (a result that overflows): output may precede

    @property
    def work_output_allowed(self) -> bool:
        return self.found_by_work or self.place == "full"


def existing(name: str) -> Callable[[Where], None]:
    """An output that exists already (the case must leave it as it is)."""

    def make(w: Where) -> None:
        path = w.t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("an earlier result\n")

    return make


# -- command-line builders -----------------------------------------------------------------------
def lora(w: Where) -> Path:
    return w.i / "lora.safetensors"


def train(*extra: object, data_dir: bool = True) -> Argv:
    """``train`` on the tiny model, one step (``data_dir=False``: no ``--train_data_dir``)."""
    return lambda w: [
        "train", "--pretrained_model_name_or_path", w.i / "model",
        *(["--train_data_dir", w.i / "data" / "img"] if data_dir else []), "--resolution", "32",
        "--output_dir", w.t / "out", "--max_train_steps", "1", "--learning_rate", "1e-3",
        "--max_data_loader_n_workers", "0", "--seed", "1",
        *[e(w) if callable(e) else e for e in extra],
    ]  # fmt: skip


def generate(*extra: object, prompt: bool = True) -> Argv:
    """``generate`` of one 32x32 image in one step (``prompt=False``: no ``--prompt``)."""
    return lambda w: [
        "generate", "--model", w.i / "tiny.safetensors", *(["--prompt", "a cat"] if prompt else []),
        "--W", "32", "--H", "32",
        "--steps", "1", "--seed", "1", "--outdir", w.t / "out",
        *[e(w) if callable(e) else e for e in extra],
    ]  # fmt: skip


def merge_adapters(name: str, *extra: object) -> Argv:
    """``merge`` of one input adapter into one adapter (no checkpoint)."""
    return lambda w: ["merge", "--models", w.i / name, "--save_to", w.t / "out.safetensors", *extra]


def merge_into_model(name: str, *extra: object, save_to: Callable[[Where], Path] | None = None) -> Argv:
    return lambda w: [
        "merge", "--sd_model", w.i / "tiny.safetensors", "--models", w.i / name,
        "--save_to", save_to(w) if save_to else w.t / "merged.safetensors", *extra,
    ]  # fmt: skip


def svd_merge(name: str, *extra: object) -> Argv:
    return lambda w: ["svd-merge", "--models", lora(w), w.i / name, "--save_to", w.t / "out.safetensors", *extra]


def resize(name: str, *extra: object) -> Argv:
    return lambda w: ["resize", "--model", w.i / name, "--save_to", w.t / "out.safetensors", "--new_rank", "2", *extra]


def extract(*extra: object) -> Argv:
    return lambda w: [
        "extract", "--model_org", w.i / "tiny.safetensors", "--model_tuned", w.i / "model",
        "--save_to", w.t / "out.safetensors", *[e(w) if callable(e) else e for e in extra],
    ]  # fmt: skip


def from_dylora(name: str, *extra: object) -> Argv:
    return lambda w: ["extract", "--from_dylora", w.i / name, "--save_to", w.t / "out.safetensors", *extra]


def convert(name: str, output: str = "out.safetensors", *extra: object) -> Argv:
    return lambda w: ["convert", w.i / name, w.t / output, "--to", "diffusers", *extra]


def resize_images(*extra: object, dst: Callable[[Where], Path] | None = None) -> Argv:
    return lambda w: [
        "resize-images", w.i / "images", dst(w) if dst else w.t / "small", "--max_resolution", "32x32", *extra
    ]
