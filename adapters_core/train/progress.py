"""Per-step bookkeeping shared by the loop: the running loss, tracker logs, step seeds."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch


class LossRecorder:
    """kohya's running loss: the mean over the last epoch's worth of steps.

    In the first epoch every loss is appended; later epochs replace the value at the same
    position, so the mean always covers one epoch.
    """

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.total = 0.0

    def add(self, *, epoch: int, step: int, loss: float) -> None:
        if epoch == 0 or step >= len(self.losses):
            self.losses.append(loss)
        else:
            self.total -= self.losses[step]
            self.losses[step] = loss
        self.total += loss

    @property
    def average(self) -> float:
        return self.total / len(self.losses) if self.losses else 0.0


def seed_step(seed: int, step: int, micro_step: int, process: int) -> None:
    """Seed torch, numpy and random for one micro-step from (seed, step, micro-step, process).

    Every random draw of a step (noise, timesteps, dropout, DyLoRA's rank unit) is then a pure
    function of the seed and the step number, so a resumed run continues exactly where the
    interrupted one was, whatever else consumed random numbers in between.
    """
    words = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, step, micro_step, process]).generate_state(2)
    value = (int(words[0]) << 32) | int(words[1])
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value & 0xFFFFFFFF)


def lr_logs(lrs: Sequence[float], descriptions: Sequence[str]) -> dict[str, float]:
    """``lr/<group>`` per optimizer group (kohya calls the text encoder's group ``textencoder``)."""
    logs = {}
    for index, lr in enumerate(lrs):
        name = descriptions[index] if index < len(descriptions) else f"group{index}"
        name = "textencoder" if name == "text_encoder" else name.replace(" ", "_")
        logs[f"lr/{name}"] = float(lr)
    return logs
