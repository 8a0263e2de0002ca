"""What a run writes while it trains: adapter files and state folders at kohya's save points.

Only the main process writes; ``--save_last_n_epochs/steps[_state]`` prune older ones.

Before anything is written, ``check_weights(step)`` runs one forward pass with the weights
about to be saved (the trainer's :meth:`~adapters_core.train.loop.Trainer.check_weights`):
an update that exploded, leaving huge but finite weights, stops the run there instead of
leaving a checkpoint that renders noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from adapters_core.network import Network
from adapters_core.train.args import TrainArgs
from adapters_core.train.interrupt import TrainingInterrupted
from adapters_core.train.saving import (
    AdapterWriter,
    OutputNames,
    remove_epoch_number,
    remove_output,
    remove_step_number,
)
from adapters_core.train.state import save_state


class Checkpoints:
    """Saves ``network`` with ``writer``'s metadata; records every path it wrote in ``files``."""

    def __init__(
        self,
        args: TrainArgs,
        names: OutputNames,
        writer: AdapterWriter,
        accelerator: Accelerator,
        network: Network,
        num_epochs: int,
        *,
        optimizer: str,
        check_weights: Callable[[int], None],
    ) -> None:
        self.args = args
        self.names = names
        self.writer = writer
        self.accelerator = accelerator
        self.network = network
        self.num_epochs = num_epochs
        self.optimizer = optimizer
        self.check_weights = check_weights
        self.files: list[Path] = []

    def save(self, path: Path, step: int, epoch: int) -> None:
        self.files.append(self.writer.write(self.network, path, step=step, epoch=epoch))

    def save_state(self, folder: Path, step: int, epoch: int) -> None:
        save_state(
            self.accelerator,
            folder,
            step=step,
            epoch=epoch,
            seed=self.args.seed or 0,
            optimizer=self.optimizer,
            overwrite=self.args.overwrite,
        )
        self.files.append(folder)

    def after_step(self, step: int, epoch: int) -> None:
        """``--save_every_n_steps``: ``<name>-stepNNNNNNNN`` (and its state), pruning old ones."""
        args, names = self.args, self.names
        if not (args.save_every_n_steps and step % args.save_every_n_steps == 0):
            return
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        self.check_weights(step)
        self.save(names.step(step), step, epoch)
        if args.save_state:
            self.save_state(names.step_state(step), step, epoch)
        old = remove_step_number(step, args.save_every_n_steps, args.save_last_n_steps)
        if old is not None:
            remove_output(names.step(old))
        keep_states = args.save_last_n_steps_state or args.save_last_n_steps
        old_state = remove_step_number(step, args.save_every_n_steps, keep_states)
        if args.save_state and old_state is not None:
            remove_output(names.step_state(old_state))

    def after_epoch(self, epoch: int, step: int) -> None:
        """``--save_every_n_epochs``: ``<name>-NNNNNN`` (and its state) before the last epoch."""
        args, names = self.args, self.names
        self.accelerator.wait_for_everyone()
        every = args.save_every_n_epochs
        if not (every and epoch % every == 0 and epoch < self.num_epochs and self.accelerator.is_main_process):
            return
        self.check_weights(step)
        self.save(names.epoch(epoch), step, epoch)
        if args.save_state:
            self.save_state(names.epoch_state(epoch), step, epoch)
        old = remove_epoch_number(epoch, every, args.save_last_n_epochs)
        if old is not None:
            remove_output(names.epoch(old))
        old_state = remove_epoch_number(epoch, every, args.save_last_n_epochs_state or args.save_last_n_epochs)
        if args.save_state and old_state is not None:
            remove_output(names.epoch_state(old_state))

    def interrupted(self, step: int, epoch: int, signal_number: int) -> TrainingInterrupted:
        """After Ctrl-C: ``<name>-interrupted`` (never over an existing file without --overwrite)
        and a resumable ``<name>-stepNNNNNNNN-state``."""
        path = self.names.interrupted()
        if path.exists() and not self.args.overwrite:
            path = path.with_name(f"{path.stem}-step{step:08d}{path.suffix}")
        state = self.names.step_state(step)
        if self.accelerator.is_main_process:
            self.check_weights(step)
            self.save(path, step, epoch)
            if not state.exists():
                self.save_state(state, step, epoch)
        return TrainingInterrupted(str(path), str(state), signal_number)

    def final(self, step: int) -> None:
        """The final adapter ``<name>.<ext>`` (and ``<name>-state`` when asked)."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        self.check_weights(step)
        if self.args.save_state or self.args.save_state_on_train_end:
            self.save_state(self.names.final_state(), step, self.num_epochs)
        self.save(self.names.final(), step, self.num_epochs)
