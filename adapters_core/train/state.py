"""``--save_state`` / ``--resume``: the training state, without any copy of the base model.

A state folder holds what ``accelerate`` saves for the objects passed to ``prepare`` (only the
network, the optimizer, the lr scheduler and the data loader; the frozen base model is never
prepared, so it is never copied): ``model.safetensors`` (adapter weights, kohya keys),
``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl`` (python, numpy, torch and
accelerate RNGs), plus ``train_state.json`` with the step and epoch counters and the seed
(kohya's file name and keys, so kohya tools can read it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from adapters_core import __version__
from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: optimizer updates done, the epoch they ended in, the seed,
    and the optimizer that wrote the state (``None`` in states of older versions and of kohya)."""

    step: int
    epoch: int
    seed: int | None
    optimizer: str | None = None


def save_state(
    accelerator: Accelerator, folder: Path, *, step: int, epoch: int, seed: int, optimizer: str, overwrite: bool
) -> Path:
    """Write a state folder atomically (to a temporary name, renamed when complete)."""
    with atomic_path(folder, overwrite=overwrite) as tmp:
        accelerator.save_state(str(tmp))
        counters = {
            "current_step": step,
            "current_epoch": epoch,
            "seed": seed,
            "optimizer": optimizer,
            "adapt_version": __version__,
        }
        (tmp / STATE_FILE).write_text(json.dumps(counters), encoding="utf-8")
    log.info("saved training state %s (step %d)", folder, step)
    return folder


def read_resume_point(folder: str | Path) -> ResumePoint:
    """The counters of a state folder; checked before any model is loaded."""
    path = Path(folder) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ResumePoint(
            int(data["current_step"]), int(data.get("current_epoch", 0)), data.get("seed"), data.get("optimizer")
        )
    except FileNotFoundError:
        raise ConfigError(
            f"--resume {folder}: no {STATE_FILE}; expected a state folder written by --save_state"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume {folder}: {STATE_FILE} is not valid ({exc})") from None


def load_state(accelerator: Accelerator, folder: str | Path) -> None:
    """Restore adapter weights, optimizer, scheduler and RNG states into the prepared objects."""
    try:
        accelerator.load_state(str(folder))
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and accelerate raise many kinds here
        message = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"--resume {folder}: the state does not fit this run (same network type, options and optimizer "
            f"are needed): {message}"
        ) from None
