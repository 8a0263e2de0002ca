"""The run at a glance, without TensorBoard: sample grids, a contact sheet, a loss plot.

- each sampling round also writes ``sample/<name>_<step|eEPOCH>_<time>_grid.png``: that round's
  prompts side by side, labelled;
- at the end, ``<name>_samples.png`` beside the LoRA: every round (rows) by every prompt
  (columns), read back from the round's PNGs one at a time;
- ``<name>_loss.png`` beside the LoRA: the loss of every step (raw and smoothed) and the
  learning rate, over the steps.

``--no_report_images`` turns all three off; the kohya-named sample images are written either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from adapters_core.atomic import atomic_path
from adapters_core.generate.grid_image import GridLayout, display_scale

SMOOTHING_WINDOW_FRACTION = 0.05  # the moving average spans 5% of the steps (at least 1)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at every position (fewer at the start)."""
    out: list[float] = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def prompt_label(prompt: str, limit: int = 60) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"


@dataclass
class SampleRound:
    label: str  # "step 40", "epoch 2"
    images: list[Path]


@dataclass
class TrainingReport:
    """Collects what the run did and draws it; only the main process keeps one."""

    output_dir: Path
    name: str
    prompts: list[str]
    enabled: bool = True
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    rounds: list[SampleRound] = field(default_factory=list)

    def record_step(self, step: int, loss: float, learning_rate: float | None) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.learning_rates.append(math.nan if learning_rate is None else learning_rate)

    def add_round(self, step: int, epoch: int | None, images: list[Path]) -> Path | None:
        """Remember a sampling round and write its grid (``None`` when switched off or empty)."""
        if not self.enabled or not images:
            return None
        label = f"epoch {epoch}" if epoch is not None else f"step {step}"
        self.rounds.append(SampleRound(label, images))
        number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())  # as kohya's sample names: never an old file
        path = images[0].parent / f"{self.name}_{number}_{stamp}_grid.png"
        return self._draw(path, f"{self.name}: {label}", [SampleRound("", images)])

    @property
    def sheet_path(self) -> Path:
        return self.output_dir / f"{self.name}_samples.png"

    @property
    def plot_path(self) -> Path:
        return self.output_dir / f"{self.name}_loss.png"

    def outputs(self) -> list[Path]:
        """The files :meth:`finish` will write (checked against --overwrite before training)."""
        if not self.enabled:
            return []
        return [self.sheet_path, self.plot_path] if self.prompts else [self.plot_path]

    def finish(self) -> list[Path]:
        """Write the contact sheet (if there were rounds) and the loss plot (if there were steps)."""
        if not self.enabled:
            return []
        written = []
        if self.rounds:
            written.append(self._draw(self.sheet_path, f"{self.name}: samples", self.rounds))
        if self.steps:
            written.append(self._plot(self.plot_path))
        return written

    def _draw(self, path: Path, title: str, rounds: list[SampleRound]) -> Path:
        """Rows of rounds by columns of prompts; each image is opened, pasted and closed in turn."""
        with Image.open(rounds[0].images[0]) as first:
            width, height = first.size
        scale = display_scale(width, height)
        columns = [prompt_label(p) for p in self.prompts[: max(len(r.images) for r in rounds)]]
        layout = GridLayout(title, columns, [r.label for r in rounds], [""], width * scale, height * scale)
        canvas = layout.canvas()
        for row, sample_round in enumerate(rounds):
            for column, image_path in enumerate(sample_round.images):
                with Image.open(image_path) as image:
                    layout.paste(canvas, image.convert("RGB"), column, row)
        with atomic_path(path, overwrite=True) as tmp:
            canvas.save(tmp, format="PNG")
        return path

    def _plot(self, path: Path) -> Path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        loss_axes = figure.add_subplot()
        window = max(1, round(len(self.losses) * SMOOTHING_WINDOW_FRACTION))
        loss_axes.plot(self.steps, self.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        loss_axes.plot(self.steps, moving_average(self.losses, window), color="tab:blue", linewidth=2,
                       label=f"loss, mean of {window} steps")
        loss_axes.set_xlabel("step")
        loss_axes.set_ylabel("loss")
        rate_axes = loss_axes.twinx()
        rate_axes.plot(self.steps, self.learning_rates, color="tab:orange", linewidth=1.5, label="learning rate")
        rate_axes.set_ylabel("learning rate")
        rate_axes.set_ylim(0, 1.1 * max((r for r in self.learning_rates if math.isfinite(r)), default=1.0) or 1.0)
        rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lines = loss_axes.get_lines() + rate_axes.get_lines()
        figure.legend(lines, [str(line.get_label()) for line in lines], loc="outside lower center", ncols=3)
        loss_axes.set_title(f"{self.name}: {len(self.steps)} steps")
        with atomic_path(path, overwrite=True) as tmp:
            figure.savefig(tmp, format="png")
        return path
