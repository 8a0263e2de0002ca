"""``adapt train``: kohya's ``train_network.py`` loop on accelerate.

Order of work: check arguments, build the dataset and check every output name (errors here
cost nothing), load the base model, cache latents, create the network, prepare the optimizer,
data loader and scheduler with accelerate, resume, then train. Only the main process writes
files. Works the same under ``accelerate launch`` and as a plain command.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from adapters_core.errors import ConfigError, TrainingDivergedError
from adapters_core.formats import precision_dtype
from adapters_core.progress import progress_bar
from adapters_core.train import components, sampling
from adapters_core.train import step as step_module  # the check forward is not a training step
from adapters_core.train.args import TrainArgs
from adapters_core.train.checkpoints import Checkpoints
from adapters_core.train.dataset import dataset_metadata
from adapters_core.train.interrupt import GracefulInterrupt
from adapters_core.train.latent_cache import LatentCache
from adapters_core.train.noise import make_noise_scheduler
from adapters_core.train.optimizers import build_optimizer, parse_optimizer_args, resolve_optimizer_name
from adapters_core.train.param_groups import check_text_encoder_lrs, optimizer_param_groups
from adapters_core.train.progress import LossRecorder, lr_logs, seed_step
from adapters_core.train.report import TrainingReport
from adapters_core.train.runtime import EpochSyncDataset, make_accelerator, make_loader, resolved_seed
from adapters_core.train.saving import (
    DEFAULT_LAST_NAME,
    AdapterWriter,
    OutputNames,
    check_outputs,
    modelspec_for,
    network_args_metadata,
    planned_outputs,
    training_metadata,
)
from adapters_core.train.schedulers import ScheduleSpec, build_lr_scheduler
from adapters_core.train.state import load_state, read_resume_point
from adapters_core.train.step import StepContext, compute_loss, encode_captions
from adapters_core.train.text_cache import TextEncoderCache, check_cacheable, encoder_fingerprint

log = logging.getLogger(__name__)

DIVERGED_HINT = (
    "usual causes: fp16 overflow (try --mixed_precision bf16 or --no_half_vae), a learning rate that is too "
    "high (lower --learning_rate/--unet_lr/--text_encoder_lr), or exploding gradients (keep --max_grad_norm 1.0)"
)


@dataclass
class TrainResult:
    """What a run produced."""

    output: Path
    steps: int
    epochs: int
    first_loss: float | None = None
    average_loss: float | None = None
    files: list[Path] = field(default_factory=list)
    main_process: bool = True


class Trainer:
    """One training run; :meth:`run` does everything."""

    def __init__(self, args: TrainArgs, *, show_progress: bool = True) -> None:
        args.validate()
        self.resume = read_resume_point(args.resume) if args.resume else None
        if args.cache_latents_to_disk and not args.cache_latents:
            args = replace(args, cache_latents=True)
        if args.cache_text_encoder_outputs_to_disk and not args.cache_text_encoder_outputs:
            args = replace(args, cache_text_encoder_outputs=True)
        self.args = replace(args, seed=resolved_seed(args, self.resume))
        self.show_progress = show_progress
        self.started_at = time.time()
        self.session_id = random.randint(0, 2**32)
        self.samples: list[Path] = []
        self.first_loss: float | None = None

    # -- setup --------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        args = self.args
        self.network_type = components.resolve_network_type(args.network, args.network_module)
        self.optimizer_name = resolve_optimizer_name(args.optimizer_type, args.use_8bit_adam, args.use_lion_optimizer)
        self.optimizer_args = parse_optimizer_args(args.optimizer_args)
        self.scheduler_args = parse_optimizer_args(args.lr_scheduler_args, "--lr_scheduler_args")
        if self.resume is not None and self.resume.optimizer not in (None, self.optimizer_name):
            raise ConfigError(
                f"--resume {args.resume}: the state was saved by optimizer {self.resume.optimizer}, this run uses "
                f"{self.optimizer_name}; resume with the same --optimizer_type"
            )
        self.prompts = sampling.load_prompts(args.sample_prompts) if args.sample_prompts else []
        sampling.sampler_name(args.sample_sampler, "--sample_sampler")
        # float32 unless --save_precision says otherwise, also when --full_bf16/--full_fp16 train in half
        self.save_dtype = precision_dtype(args.save_precision) or torch.float32
        self.cache = LatentCache(args.cache_latents_to_disk) if args.cache_latents else None
        self.dataset = components.build_dataset(args, self.cache)
        if args.cache_text_encoder_outputs:
            check_cacheable(self.dataset.config)
        self.sync = EpochSyncDataset(self.dataset)
        self.accelerator = make_accelerator(args)
        acc = self.accelerator
        loader = make_loader(self.sync, args)
        batches = math.ceil(len(self.dataset) / acc.num_processes)
        self.updates_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
        if args.max_train_epochs is not None:
            self.args = args = replace(args, max_train_steps=args.max_train_epochs * self.updates_per_epoch)
        self.num_epochs = math.ceil(args.max_train_steps / self.updates_per_epoch)
        if args.save_n_epoch_ratio:
            self.args = args = replace(
                args, save_every_n_epochs=math.floor(self.num_epochs / args.save_n_epoch_ratio) or 1
            )
        self.dataset.set_max_train_steps(args.max_train_steps)
        self.start_step = self.resume.step if self.resume else 0
        if self.start_step > args.max_train_steps:
            raise ConfigError(
                f"--resume {args.resume}: the state is at step {self.start_step}, past --max_train_steps "
                f"{args.max_train_steps}"
            )
        self.names = OutputNames(Path(args.output_dir or "."), args.output_name, args.save_model_as)
        planned = planned_outputs(
            args,
            self.names,
            self.num_epochs,
            args.max_train_steps,
            self.start_step,
            self.start_step // self.updates_per_epoch,
        )
        self.report = TrainingReport(
            Path(args.output_dir or "."),
            args.output_name or DEFAULT_LAST_NAME,
            [prompt.prompt for prompt in self.prompts],
            enabled=not args.no_report_images and acc.is_main_process,
        )
        check_outputs([*planned, *self.report.outputs()], args.overwrite)  # on every process: none waits for one
        self.loader = loader

    def _prepare_model(self) -> None:
        args, acc = self.args, self.accelerator
        self.model = components.load_base_model(args, acc.device)
        self.model.family.check_clip_skip(self.model.components, args.clip_skip)
        check_text_encoder_lrs(args.text_encoder_lr, self.model.family)  # before any caching
        if self.cache is not None:
            self.cache.fill(
                self.dataset,
                self.model.vae,
                batch_size=args.vae_batch_size,
                device=acc.device,
                dtype=self.model.vae.dtype,
                write_files=acc.is_main_process,
                show_progress=self.show_progress and acc.is_local_main_process,
            )
        options, self.raw_network_args = components.network_options(args, self.network_type)
        self.network = components.create_network(args, self.model, self.network_type, options)
        for _, text_encoder in self.model.text_encoders():
            text_encoder.train(args.gradient_checkpointing and args.train_text_encoder)
        groups, self.lr_descriptions = optimizer_param_groups(
            self.network, args.text_encoder_lr, args.unet_lr, args.learning_rate
        )
        choice = build_optimizer(self.optimizer_name, groups, args.learning_rate, self.optimizer_args)
        self.optimizer_description = choice.description
        self.lr_scheduler_name = choice.forced_scheduler or args.lr_scheduler
        scheduler = build_lr_scheduler(
            choice.optimizer,
            ScheduleSpec(
                name=self.lr_scheduler_name,
                total_steps=args.max_train_steps * acc.num_processes,
                warmup_steps=args.lr_warmup_steps,
                decay_steps=args.lr_decay_steps,
                num_cycles=args.lr_scheduler_num_cycles,
                power=args.lr_scheduler_power,
                timescale=args.lr_scheduler_timescale,
                min_lr_ratio=args.lr_scheduler_min_lr_ratio,
                scheduler_type=args.lr_scheduler_type,
                scheduler_args=self.scheduler_args,
            ),
        )
        self.prepared_network, self.optimizer, self.loader, self.lr_scheduler = acc.prepare(
            self.network, choice.optimizer, self.loader, scheduler
        )
        if self.resume is not None:
            load_state(acc, args.resume)  # type: ignore[arg-type]
            log.info("resumed from %s at step %d", args.resume, self.start_step)
        self.step_context = StepContext(
            args,
            self.model,
            make_noise_scheduler(zero_terminal_snr=args.zero_terminal_snr),
            acc.device,
            acc.autocast,
            args.train_text_encoder,
        )
        if args.cache_text_encoder_outputs:
            self._cache_text_encoder_outputs()

    def _cache_text_encoder_outputs(self) -> None:
        """Encode every caption once; without sample prompts the text encoder then leaves memory."""
        args, acc, model = self.args, self.accelerator, self.model
        cache = TextEncoderCache(args.cache_text_encoder_outputs_to_disk)
        fingerprint = ""
        if cache.to_disk:
            fingerprint = encoder_fingerprint(
                [encoder for _, encoder in model.text_encoders()],
                clip_skip=args.clip_skip,
                max_token_length=args.max_token_length,
                mixed_precision=args.mixed_precision,
            )
        cache.fill(
            self.dataset,
            partial(encode_captions, self.step_context),
            fingerprint=fingerprint,
            batch_size=max(ds.batch_size for ds in self.dataset.config.datasets),
            write_files=acc.is_main_process,
            show_progress=self.show_progress and acc.is_local_main_process,
        )
        self.step_context.text_cache = cache
        if not self.prompts:
            for _, text_encoder in model.text_encoders():
                text_encoder.to("meta")  # frees its weights; nothing runs it again

    def _prepare_output(self) -> None:
        args, acc = self.args, self.accelerator
        dataset_md = dataset_metadata(self.dataset, acc.num_processes, args.gradient_accumulation_steps)
        metadata = training_metadata(
            args,
            session_id=self.session_id,
            started_at=self.started_at,
            network_module=args.network_module or self.network_type.kohya_module or self.network_type.name,
            network_args=network_args_metadata(self.raw_network_args, self.network.options),
            optimizer=self.optimizer_description,
            num_batches_per_epoch=len(self.loader),
            num_epochs=self.num_epochs,
            max_train_steps=args.max_train_steps,
            lr_warmup_steps=args.lr_warmup_steps,
            lr_scheduler=self.lr_scheduler_name,
            family=self.model.family,
            v_parameterization=self.model.v_parameterization,
            dataset=dataset_md,
        )
        modelspec = modelspec_for(
            args, family=self.model.family, v_parameterization=self.model.v_parameterization,
            started_at=self.started_at,
        )
        writer = AdapterWriter(metadata, modelspec, args.no_metadata, self.save_dtype, args.overwrite)
        self.checkpoints = Checkpoints(
            args,
            self.names,
            writer,
            acc,
            self.network,
            self.num_epochs,
            optimizer=self.optimizer_name,
            check_weights=self.check_weights,
        )
        if acc.trackers is not None and (args.logging_dir or args.log_with):
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers(args.log_tracker_name or "network_train", config=config)

    def _sample(self, step: int, epoch: int | None) -> None:
        args = self.args
        if not self.prompts or not self.accelerator.is_main_process:
            return
        if not sampling.is_sample_time(
            step,
            epoch,
            every_n_steps=args.sample_every_n_steps,
            every_n_epochs=args.sample_every_n_epochs,
            at_first=args.sample_at_first,
        ):
            return
        self.network.eval()
        images = sampling.generate_samples(
            self.model,
            self.prompts,
            Path(args.output_dir or ".") / "sample",
            output_name=args.output_name,
            step=step,
            epoch=epoch,
            default_sampler=sampling.sampler_name(args.sample_sampler, "--sample_sampler"),
            clip_skip=args.clip_skip,
            max_token_length=args.max_token_length,
            device=self.accelerator.device,
            autocast=self.accelerator.autocast,
        )
        grid = self.report.add_round(step, epoch, images)
        self.samples += [*images, grid] if grid else images
        self.network.train()

    # -- training -----------------------------------------------------------------------
    def _update(self, loss: torch.Tensor, step: int) -> None:
        """Backward, then (at an accumulation boundary) sync, clip and step."""
        acc = self.accelerator
        acc.backward(loss)
        if acc.sync_gradients:
            params = [p for p in self.network.parameters() if p.requires_grad]
            if acc.num_processes > 1:
                for p in params:
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if self.args.max_grad_norm:
                norm = acc.clip_grad_norm_(params, self.args.max_grad_norm)
                # With fp16's gradient scaler an infinite norm only means "skip this step".
                if acc.scaler is None and norm is not None and not math.isfinite(float(norm)):
                    raise self._diverged(step, f"the gradient norm is {float(norm)}")
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _train_epoch(
        self, epoch_index: int, step: int, skip: int, bar: tqdm, recorder: LossRecorder, interrupt: GracefulInterrupt
    ) -> int:
        args, acc, network = self.args, self.accelerator, self.network
        self.sync.epoch.value = epoch_index + 1
        loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
        micro = 0
        for position, batch in enumerate(loader, start=skip):
            seed_step(args.seed or 0, step, micro, 0)
            network.on_train_step(step)  # e.g. DyLoRA's rank units: the same on every process
            if acc.num_processes > 1:
                seed_step(args.seed or 0, step, micro, 1 + acc.process_index)  # each process its own noise
            self.sync.step.value = step
            multiplier = float(batch["network_multipliers"][0])
            if multiplier != network.multiplier:
                network.set_multiplier(multiplier)
            with acc.accumulate(self.prepared_network):
                loss = compute_loss(self.step_context, batch)
                value = float(loss.detach().item())
                if not math.isfinite(value):
                    raise self._diverged(step, f"the loss is {value}")
                self._update(loss, step)
            self.last_batch = batch
            micro += 1
            self.first_loss = value if self.first_loss is None else self.first_loss
            recorder.add(epoch=epoch_index, step=position, loss=value)
            if not acc.sync_gradients:
                continue
            micro = 0
            step += 1
            lrs = self.lr_scheduler.get_last_lr()
            bar.update(1)
            self.report.record_step(step, value, lrs[0] if lrs else None)
            bar.set_postfix(
                epoch=f"{epoch_index + 1}/{self.num_epochs}",
                loss=f"{recorder.average:.4f}",
                lr=f"{lrs[0]:.2e}" if lrs else "-",
            )
            if acc.trackers:
                acc.log(
                    {"loss/current": value, "loss/average": recorder.average, **lr_logs(lrs, self.lr_descriptions)},
                    step=step,
                )
            self._sample(step, None)
            self.checkpoints.after_step(step, epoch_index)
            if interrupt.requested:
                raise self.checkpoints.interrupted(step, epoch_index, interrupt.signal_number or signal.SIGINT)
            if step >= args.max_train_steps:
                break
        return step

    def _diverged(self, step: int, what: str) -> TrainingDivergedError:
        return TrainingDivergedError(f"step {step + 1}: {what}; training stopped; {DIVERGED_HINT}")

    def check_weights(self, step: int) -> None:
        """Before a checkpoint of the weights after ``step`` updates is written: one forward pass
        on the last batch with those weights (no gradients, random state untouched) must give a
        finite loss, so the update that explodes never leaves a checkpoint behind."""
        batch = getattr(self, "last_batch", None)
        if batch is None:
            return
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            value = float(step_module.compute_loss(self.step_context, batch).item())
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"step {step}: the weights this update produced give a loss of {value}; training stopped and "
                f"the checkpoint of step {step} was not written; {DIVERGED_HINT}"
            )

    def run(self) -> TrainResult:
        set_seed(self.args.seed or 0)  # the network's initial weights come from the seed, as in kohya
        self._prepare_data()
        self._prepare_model()
        self._prepare_output()
        args, acc = self.args, self.accelerator
        step = self.start_step
        start_epoch, skip = divmod(step, self.updates_per_epoch)
        skip *= args.gradient_accumulation_steps
        self.first_loss = None
        recorder = LossRecorder()
        log.info(
            "training %s: %d images (with repeats), %d reg images, %d batches per epoch, %d epochs, %d steps",
            self.network_type.name,
            self.dataset.num_train_images,
            self.dataset.num_reg_images,
            len(self.loader),
            self.num_epochs,
            args.max_train_steps,
        )
        self.network.train()
        if step == 0:
            self._sample(0, None)
        bar = progress_bar(
            args.max_train_steps,
            "steps",
            unit="step",
            initial=step,
            smoothing=0,
            disable=not (self.show_progress and acc.is_local_main_process),
        )
        with bar, GracefulInterrupt() as interrupt:  # the bar ends its line before any error is printed
            for epoch_index in range(start_epoch, self.num_epochs):
                step = self._train_epoch(epoch_index, step, skip, bar, recorder, interrupt)
                skip = 0
                if acc.trackers:
                    acc.log({"loss/epoch_average": recorder.average}, step=epoch_index + 1)
                self.checkpoints.after_epoch(epoch_index + 1, step)
                self._sample(step, epoch_index + 1)
        self.network.eval()
        self.checkpoints.final(step)
        self.samples += self.report.finish()
        acc.end_training()
        return TrainResult(
            self.names.final(),
            step,
            self.num_epochs,
            self.first_loss,
            recorder.average,
            self.checkpoints.files + self.samples,
            acc.is_main_process,
        )


def train(args: TrainArgs, *, show_progress: bool = True) -> TrainResult:
    """Run ``adapt train`` with these arguments."""
    return Trainer(args, show_progress=show_progress).run()
