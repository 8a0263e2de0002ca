"""The arguments of ``adapt train``: kohya's ``train_network.py`` flags, with kohya's defaults.

:class:`TrainArgs` is the single source of truth: the CLI builds one click option per field
(accepted as ``--network_dim`` and ``--network-dim``), ``--config_file`` toml keys are checked
against the field names, and the metadata records the values. Each field's ``metadata`` holds
its help text and how to parse it (``kind``: ``flag``, ``list`` for kohya's ``nargs="*"``,
``int_or_float`` for step counts that may be a ratio).

kohya flags that are recognised but not implemented are listed in
:mod:`adapters_core.train.unsupported_flags`.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from adapters_core.errors import ConfigError
from adapters_core.ranges import Range

# Steps that kohya accepts as an int or as a fraction (< 1) of the run's steps.
IntOrFloat = int | float

SAVE_FORMATS = ("safetensors", "ckpt", "pt")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
LOG_WITH = ("tensorboard", "wandb", "all")


def opt(default: Any, help: str, *, type: Any = None, kind: str = "value", choices: tuple[Any, ...] = ()) -> Any:
    """A TrainArgs field: its default plus the help and parsing hints the CLI needs."""
    meta = {"help": help, "type": type, "kind": kind, "choices": choices}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainArgs:
    """Every option of ``adapt train`` (kohya spelling), with kohya's defaults."""

    # -- base model --------------------------------------------------------------------
    pretrained_model_name_or_path: str | None = opt(
        None, "Base model: a Diffusers folder or an SD 1.x/2.x .safetensors/.ckpt file.", type=str
    )
    v2: bool = opt(False, "The base model is Stable Diffusion 2.x.", kind="flag")
    v_parameterization: bool = opt(False, "Train with v-prediction targets (SD 2.x 768-v).", kind="flag")
    tokenizer: str | None = opt(
        None, "CLIP tokenizer folder (or a Diffusers model folder) when the base model has none.", type=str
    )
    no_half_vae: bool = opt(False, "Keep the VAE in float32 under --mixed_precision.", kind="flag")
    # -- network -----------------------------------------------------------------------
    network: str | None = opt(
        None, "Adapter type to train: lora (default), c3lier, dylora, or any installed type.", type=str
    )
    network_module: str | None = opt(
        None, "kohya module name (networks.lora, networks.dylora); same as --network.", type=str
    )
    network_dim: int | None = opt(
        None, "Rank of the adapter (default 4; metadata records None when not given).", type=int
    )
    network_alpha: float = opt(1, "Alpha; scale = alpha / rank (default 1).", type=float)
    network_dropout: float | None = opt(None, "Dropout on the adapter's hidden features during training.", type=float)
    network_args: tuple[str, ...] = opt(
        (), "Type options as key=value ... (conv_dim=4 unit=4 down_lr_weight=sine ...).", type=str, kind="list"
    )
    network_weights: str | None = opt(None, "Continue training from this adapter file.", type=str)
    dim_from_weights: bool = opt(False, "Take ranks and alphas from --network_weights.", kind="flag")
    network_train_unet_only: bool = opt(False, "Train only the U-Net modules.", kind="flag")
    network_train_text_encoder_only: bool = opt(False, "Train only the text-encoder modules.", kind="flag")
    base_weights: tuple[str, ...] = opt(
        (), "Adapter files merged into the base model before training.", type=str, kind="list"
    )
    base_weights_multiplier: tuple[float, ...] = opt(
        (), "Multiplier of each --base_weights file (default 1).", type=float, kind="list"
    )
    # -- learning rates, optimizer, schedule ---------------------------------------------
    learning_rate: float = opt(2e-6, "Learning rate (kohya's default 2e-6; LoRA usually wants 1e-4).", type=float)
    unet_lr: float | None = opt(None, "Learning rate of the U-Net modules (default --learning_rate).", type=float)
    text_encoder_lr: tuple[float, ...] = opt(
        (), "Learning rate of the text-encoder modules: one value, or one per text encoder (SDXL: two).", type=float, kind="list"
    )
    optimizer_type: str = opt(
        "",
        "AdamW (default), AdamW8bit, Lion, Lion8bit, SGDNesterov, SGDNesterov8bit, Adafactor, or pkg.Class.",
        type=str,
    )
    use_8bit_adam: bool = opt(False, "Same as --optimizer_type AdamW8bit.", kind="flag")
    use_lion_optimizer: bool = opt(False, "Same as --optimizer_type Lion.", kind="flag")
    optimizer_args: tuple[str, ...] = opt(
        (), "Optimizer keyword arguments key=value (Python literals).", type=str, kind="list"
    )
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0 disables).", type=float)
    lr_scheduler: str = opt(
        "constant",
        "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, piecewise_constant, "
        "inverse_sqrt, cosine_with_min_lr, warmup_stable_decay, adafactor.",
        type=str,
    )
    lr_scheduler_type: str = opt(
        "", "A scheduler class (torch.optim.lr_scheduler name or pkg.Class) instead of --lr_scheduler.", type=str
    )
    lr_scheduler_args: tuple[str, ...] = opt(
        (), "Scheduler keyword arguments key=value (Python literals).", type=str, kind="list"
    )
    lr_warmup_steps: IntOrFloat = opt(
        0, "Warm-up steps, or a fraction (< 1) of the training steps.", kind="int_or_float"
    )
    lr_decay_steps: IntOrFloat = opt(
        0, "Decay steps of warmup_stable_decay, or a fraction of the steps.", kind="int_or_float"
    )
    lr_scheduler_num_cycles: int = opt(1, "Restarts of cosine_with_restarts.", type=int)
    lr_scheduler_power: float = opt(1, "Power of the polynomial schedule.", type=float)
    lr_scheduler_timescale: int | None = opt(None, "Timescale of inverse_sqrt (default: warm-up steps).", type=int)
    lr_scheduler_min_lr_ratio: float | None = opt(
        None, "Minimum lr ratio of cosine_with_min_lr / warmup_stable_decay.", type=float
    )
    # -- length of the run -------------------------------------------------------------
    max_train_steps: int = opt(1600, "Training steps (optimizer updates).", type=int)
    max_train_epochs: int | None = opt(None, "Training epochs; overrides --max_train_steps.", type=int)
    gradient_accumulation_steps: int = opt(1, "Batches accumulated per optimizer update.", type=int)
    seed: int | None = opt(None, "Random seed; the same seed gives the same result.", type=int)
    # -- precision and speed -----------------------------------------------------------
    mixed_precision: str = opt(
        "no",
        "Base-model precision: no, fp16 (GPU only), bf16. Adapter weights stay float32 unless --full_bf16/--full_fp16.",
        type=str,
        choices=PRECISIONS,
    )
    full_bf16: bool = opt(
        False,
        "Train the adapter's own weights, gradients and optimizer state in bfloat16 too (half their memory); "
        "needs --mixed_precision bf16.",
        kind="flag",
    )
    full_fp16: bool = opt(
        False,
        "Train the adapter's own weights, gradients and optimizer state in float16 too (experimental, as in kohya); "
        "needs --mixed_precision fp16 (CUDA).",
        kind="flag",
    )
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward to save memory.", kind="flag")
    xformers: bool = opt(False, "Use xformers attention (PyTorch SDPA when xformers is not installed).", kind="flag")
    sdpa: bool = opt(False, "Use PyTorch scaled-dot-product attention (the default).", kind="flag")
    mem_eff_attn: bool = opt(False, "kohya's memory-efficient attention; adapt uses PyTorch SDPA.", kind="flag")
    max_data_loader_n_workers: int = opt(
        8, "Data-loading worker processes (at most the CPU count; 0 loads in the main process).", type=int
    )
    persistent_data_loader_workers: bool = opt(False, "Keep data-loading workers between epochs.", kind="flag")
    cache_latents: bool = opt(False, "Encode every image once before training (no color_aug/random_crop).", kind="flag")
    cache_latents_to_disk: bool = opt(
        False, "Keep the latent cache as .npz files next to the images, reused across runs.", kind="flag"
    )
    vae_batch_size: int = opt(1, "Images per VAE call when caching latents.", type=int)
    cache_text_encoder_outputs: bool = opt(
        False,
        "Encode each caption once before training; needs --network_train_unet_only (no caption shuffle/dropout, "
        "tag dropout, token warm-up or wildcards).",
        kind="flag",
    )
    cache_text_encoder_outputs_to_disk: bool = opt(
        False, "Keep the text-encoder output cache as <image>_te_outputs.npz files, reused across runs.", kind="flag"
    )
    skip_cache_check: bool = opt(
        False, "Accepted for kohya compatibility (cache validity is always checked; it is cheap).", kind="flag"
    )
    # -- text --------------------------------------------------------------------------
    clip_skip: int | None = opt(None, "Use the output of the k-th last text-encoder layer (2 = penultimate).", type=int)
    max_token_length: int | None = opt(
        None, "Caption length in tokens: 75 (default), 150 or 225.", type=int, choices=(None, 75, 150, 225)
    )
    # -- noise and loss ----------------------------------------------------------------
    noise_offset: float | None = opt(None, "Noise offset (0.1 is typical).", type=float)
    noise_offset_random_strength: bool = opt(False, "Scale the noise offset by U(0,1) each step.", kind="flag")
    adaptive_noise_scale: float | None = opt(None, "Add this times |mean latent| to the noise offset.", type=float)
    multires_noise_iterations: int | None = opt(None, "Multi-resolution (pyramid) noise iterations.", type=int)
    multires_noise_discount: float = opt(0.3, "Discount of multi-resolution noise.", type=float)
    ip_noise_gamma: float | None = opt(None, "Input-perturbation noise strength.", type=float)
    ip_noise_gamma_random_strength: bool = opt(False, "Scale --ip_noise_gamma by U(0,1) each step.", kind="flag")
    zero_terminal_snr: bool = opt(False, "Rescale the noise schedule to zero terminal SNR.", kind="flag")
    min_timestep: int | None = opt(None, "Smallest training timestep (default 0).", type=int)
    max_timestep: int | None = opt(None, "Largest training timestep, exclusive (default 1000).", type=int)
    loss_type: str = opt("l2", "Loss: l2 (MSE), l1, huber, smooth_l1.", type=str, choices=LOSS_TYPES)
    huber_schedule: str = opt(
        "snr", "Huber parameter schedule: constant, exponential, snr.", type=str, choices=HUBER_SCHEDULES
    )
    huber_c: float = opt(0.1, "Huber parameter.", type=float)
    huber_scale: float = opt(1.0, "Huber parameter scale.", type=float)
    min_snr_gamma: float | None = opt(None, "Min-SNR weighting gamma (5 is typical).", type=float)
    scale_v_pred_loss_like_noise_pred: bool = opt(
        False, "Scale the v-prediction loss like the noise-prediction loss.", kind="flag"
    )
    v_pred_like_loss: float | None = opt(None, "Add a v-prediction-like loss with this weight.", type=float)
    debiased_estimation_loss: bool = opt(False, "Debiased estimation loss weighting.", kind="flag")
    prior_loss_weight: float = opt(1.0, "Loss weight of regularization images.", type=float)
    masked_loss: bool = opt(False, "Weight the loss by the images' alpha mask (with alpha_mask).", kind="flag")
    # -- data --------------------------------------------------------------------------
    dataset_config: str | None = opt(None, "kohya dataset config toml.", type=str)
    train_data_dir: str | None = opt(None, "Folder of '<repeats>_<class tokens>' image folders.", type=str)
    reg_data_dir: str | None = opt(None, "Folder of regularization image folders.", type=str)
    in_json: str | None = opt(None, "Fine-tuning metadata json (captions) for --train_data_dir.", type=str)
    dataset_repeats: int = opt(1, "Repeats of the fine-tuning dataset.", type=int)
    resolution: str | None = opt(None, "Training resolution: 'size' or 'width,height'.", type=str)
    train_batch_size: int = opt(1, "Batch size.", type=int)
    enable_bucket: bool = opt(False, "Aspect-ratio buckets.", kind="flag")
    min_bucket_reso: int = opt(256, "Smallest bucket side.", type=int)
    max_bucket_reso: int = opt(1024, "Largest bucket side.", type=int)
    bucket_reso_steps: int = opt(64, "Bucket side step.", type=int)
    bucket_no_upscale: bool = opt(False, "Never enlarge images to fit a bucket.", kind="flag")
    caption_extension: str = opt(".caption", "Caption file extension.", type=str)
    caption_extention: str | None = opt(
        None, "Misspelled alias of --caption_extension (kohya compatibility).", type=str
    )
    caption_separator: str = opt(",", "Tag separator in captions.", type=str)
    shuffle_caption: bool = opt(False, "Shuffle the caption's tags.", kind="flag")
    keep_tokens: int = opt(0, "Keep this many leading tags in place when shuffling.", type=int)
    keep_tokens_separator: str = opt("", "Tags before this separator stay in place.", type=str)
    secondary_separator: str | None = opt(None, "Separator of tags that move together.", type=str)
    enable_wildcard: bool = opt(False, "Expand {a|b} wildcards; multi-line captions.", kind="flag")
    caption_prefix: str | None = opt(None, "Text prepended to each caption.", type=str)
    caption_suffix: str | None = opt(None, "Text appended to each caption.", type=str)
    caption_dropout_rate: float = opt(0.0, "Probability of training on an empty caption.", type=float)
    caption_dropout_every_n_epochs: int = opt(0, "Drop every caption every n-th epoch.", type=int)
    caption_tag_dropout_rate: float = opt(0.0, "Probability of dropping each tag.", type=float)
    token_warmup_min: int = opt(1, "Tags used at the start of token warm-up.", type=int)
    token_warmup_step: float = opt(0.0, "Steps (or fraction of steps) of token warm-up.", type=float)
    color_aug: bool = opt(False, "Random hue augmentation.", kind="flag")
    flip_aug: bool = opt(False, "Random horizontal flip.", kind="flag")
    random_crop: bool = opt(False, "Random instead of centre crop.", kind="flag")
    face_crop_aug_range: str | None = opt(None, "Face-centred crop range 'low,high'.", type=str)
    alpha_mask: bool = opt(False, "Read the images' alpha channel as a loss mask.", kind="flag")
    cache_info: bool = opt(False, "Accepted for kohya compatibility (no effect).", kind="flag")
    # -- output ------------------------------------------------------------------------
    output_dir: str | None = opt(None, "Folder for the trained files.", type=str)
    output_name: str | None = opt(
        None, "File name without extension (default 'last'; checkpoints 'epoch'/'at').", type=str
    )
    save_model_as: str = opt("safetensors", "File format: safetensors, ckpt, pt.", type=str, choices=SAVE_FORMATS)
    save_precision: str | None = opt(
        None, "Saved precision: float, fp16, bf16 (default: float32).", type=str, choices=(None, *SAVE_PRECISIONS)
    )
    save_every_n_epochs: int | None = opt(None, "Write <name>-NNNNNN.<ext> every n epochs.", type=int)
    save_every_n_steps: int | None = opt(None, "Write <name>-stepNNNNNNNN.<ext> every n steps.", type=int)
    save_n_epoch_ratio: int | None = opt(None, "Save about this many epoch checkpoints in total.", type=int)
    save_last_n_epochs: int | None = opt(None, "Keep only the last n epoch checkpoints.", type=int)
    save_last_n_epochs_state: int | None = opt(
        None, "Keep only the last n epoch states (default --save_last_n_epochs).", type=int
    )
    save_last_n_steps: int | None = opt(None, "Keep only checkpoints of the last n steps.", type=int)
    save_last_n_steps_state: int | None = opt(
        None, "Keep only states of the last n steps (default --save_last_n_steps).", type=int
    )
    save_state: bool = opt(
        False,
        "Also save the training state (adapter, optimizer, scheduler, RNG, step) with each checkpoint.",
        kind="flag",
    )
    save_state_on_train_end: bool = opt(False, "Save the training state at the end only.", kind="flag")
    resume: str | None = opt(None, "Resume from a state folder written by --save_state.", type=str)
    overwrite: bool = opt(False, "Replace existing output files.", kind="flag")
    no_metadata: bool = opt(False, "Write only the minimal ss_* metadata (plus modelspec and hashes).", kind="flag")
    training_comment: str | None = opt(None, "Comment stored in the metadata.", type=str)
    metadata_title: str | None = opt(None, "modelspec.title (default: output name).", type=str)
    metadata_author: str | None = opt(None, "modelspec.author.", type=str)
    metadata_description: str | None = opt(None, "modelspec.description.", type=str)
    metadata_license: str | None = opt(None, "modelspec.license.", type=str)
    metadata_tags: str | None = opt(None, "modelspec.tags.", type=str)
    # -- logging and samples -----------------------------------------------------------
    logging_dir: str | None = opt(None, "TensorBoard log folder (enables logging).", type=str)
    log_with: str | None = opt(None, "Tracker: tensorboard, wandb, all.", type=str, choices=(None, *LOG_WITH))
    log_prefix: str | None = opt(None, "Prefix of the run's log folder name.", type=str)
    log_tracker_name: str | None = opt(None, "Tracker project name (default network_train).", type=str)
    log_tracker_config: str | None = opt(None, "Toml file of tracker init arguments.", type=str)
    sample_every_n_steps: int | None = opt(None, "Generate sample images every n steps.", type=int)
    sample_every_n_epochs: int | None = opt(None, "Generate sample images every n epochs (overrides steps).", type=int)
    sample_at_first: bool = opt(False, "Generate sample images before training.", kind="flag")
    sample_prompts: str | None = opt(
        None, "Prompt file (.txt with --n --w --h --s --l --d options, .toml or .json).", type=str
    )
    sample_sampler: str = opt(
        "ddim", "Sampler of sample images: ddim, pndm, lms, euler, euler_a, heun, dpmsolver++, ddpm.", type=str
    )
    no_report_images: bool = opt(
        False, "Do not write the sample grids, the contact sheet and the loss plot (adapt's training report).",
        kind="flag",
    )
    # -- config files ------------------------------------------------------------------
    config_file: str | None = opt(None, "Toml file of these arguments (command-line flags override it).", type=str)
    output_config: bool = opt(False, "Write the arguments to --config_file and exit.", kind="flag")

    # ---------------------------------------------------------------------------------
    @property
    def final_output_name(self) -> str:
        return self.output_name if self.output_name is not None else "last"

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only

    @property
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    def model_family(self) -> str | None:
        """The model family ``--v2`` asks for (``None``: detected from the model)."""
        from adapters_core.plugins import get_registry

        return get_registry().family_for_v2_flag(self.v2)

    def dataset_cli_values(self) -> dict[str, Any]:
        """The values the dataset layer takes from the command line (its lowest layer)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.caption_extention is not None:
            values["caption_extension"] = self.caption_extention
        return values

    def validate(self) -> None:
        """Checks that need no file: required flags, ranges, incompatible combinations."""
        if not self.pretrained_model_name_or_path:
            raise ConfigError(
                "--pretrained_model_name_or_path: required (a Diffusers folder or a .safetensors/.ckpt file)"
            )
        if not self.output_dir:
            raise ConfigError("--output_dir: required (the folder for the trained files)")
        if self.dataset_config is None and self.train_data_dir is None:
            raise ConfigError("--dataset_config or --train_data_dir: one is required")
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise ConfigError("--network_train_unet_only and --network_train_text_encoder_only: give at most one")
        if (self.cache_text_encoder_outputs or self.cache_text_encoder_outputs_to_disk) and self.train_text_encoder:
            raise ConfigError(
                "--cache_text_encoder_outputs: needs --network_train_unet_only (a text encoder whose outputs are "
                "cached cannot train)"
            )
        self.check_full_precision()
        if self.dim_from_weights and not self.network_weights:
            raise ConfigError("--dim_from_weights: needs --network_weights")
        for name in RANGES:
            check_range(name, getattr(self, name))
        low, high = self.min_timestep or 0, self.max_timestep or 1000
        if low >= high:
            raise ConfigError(f"--min_timestep {low} / --max_timestep {high}: the minimum must be below the maximum")
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ConfigError(
                f"--min_bucket_reso {self.min_bucket_reso}: larger than --max_bucket_reso {self.max_bucket_reso}"
            )
        if self.save_last_n_steps is not None and self.save_every_n_steps is None:
            raise ConfigError("--save_last_n_steps: needs --save_every_n_steps")
        if self.save_last_n_epochs is not None and self.save_every_n_epochs is None and self.save_n_epoch_ratio is None:
            raise ConfigError("--save_last_n_epochs: needs --save_every_n_epochs")
        if (
            self.sample_every_n_steps or self.sample_every_n_epochs or self.sample_at_first
        ) and not self.sample_prompts:
            raise ConfigError("--sample_every_n_steps/--sample_every_n_epochs/--sample_at_first: need --sample_prompts")
        if self.sample_prompts and not os.path.isfile(self.sample_prompts):
            raise ConfigError(f"--sample_prompts {self.sample_prompts}: no such file")
        if self.resume and not os.path.isdir(self.resume):
            raise ConfigError(
                f"--resume {self.resume}: not a folder (expected a '<name>-state' folder from --save_state)"
            )
        if self.log_with in ("tensorboard", "all") and self.logging_dir is None:
            raise ConfigError(f"--log_with {self.log_with}: needs --logging_dir")
        if self.masked_loss and not self.alpha_mask and self.dataset_config is None:
            raise ConfigError("--masked_loss: needs --alpha_mask (conditioning_data_dir masks are not supported)")
        if len(self.base_weights_multiplier) > len(self.base_weights):
            raise ConfigError("--base_weights_multiplier: more values than --base_weights files")

    def check_full_precision(self) -> None:
        """--full_bf16 needs --mixed_precision bf16, --full_fp16 needs fp16 (kohya's rule); not both."""
        if self.full_bf16 and self.full_fp16:
            raise ConfigError("--full_bf16 and --full_fp16: give at most one")
        for flag, precision in (("full_bf16", "bf16"), ("full_fp16", "fp16")):
            if getattr(self, flag) and self.mixed_precision != precision:
                raise ConfigError(
                    f"--{flag}: needs --mixed_precision {precision} (got --mixed_precision {self.mixed_precision})"
                )

    @property
    def full_precision(self) -> bool:
        """--full_bf16 or --full_fp16: the adapter trains in the --mixed_precision dtype, not float32."""
        return self.full_bf16 or self.full_fp16


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)
BELOW_1 = Range(0, 1, high_open=True)

# The documented range of every numeric flag, checked for the command line, --config_file and the API.
RANGES: dict[str, Range] = {
    **dict.fromkeys(
        [
            "network_dim", "max_train_steps", "max_train_epochs", "gradient_accumulation_steps", "vae_batch_size",
            "lr_scheduler_num_cycles", "lr_scheduler_timescale", "multires_noise_iterations", "dataset_repeats",
            "train_batch_size", "bucket_reso_steps", "token_warmup_min", "clip_skip", "save_every_n_epochs",
            "save_every_n_steps", "save_n_epoch_ratio", "save_last_n_epochs", "save_last_n_epochs_state",
            "save_last_n_steps", "save_last_n_steps_state", "sample_every_n_steps", "sample_every_n_epochs",
        ],
        AT_LEAST_1,
    ),
    **dict.fromkeys(
        [
            "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "max_grad_norm", "lr_warmup_steps",
            "lr_decay_steps", "lr_scheduler_power", "max_data_loader_n_workers", "noise_offset", "ip_noise_gamma",
            "v_pred_like_loss", "prior_loss_weight", "keep_tokens", "caption_dropout_every_n_epochs",
            "token_warmup_step", "base_weights_multiplier",
        ],
        AT_LEAST_0,
    ),
    **dict.fromkeys(["huber_c", "huber_scale", "min_snr_gamma"], POSITIVE),
    **dict.fromkeys(
        ["multires_noise_discount", "caption_dropout_rate", "caption_tag_dropout_rate", "lr_scheduler_min_lr_ratio"],
        FRACTION,
    ),
    "network_dropout": BELOW_1,
    "adaptive_noise_scale": Range(),
    "seed": Range(0, 2**32 - 1),
    "min_timestep": Range(0, 999),
    "max_timestep": Range(1, 1000),
    "min_bucket_reso": AT_LEAST_1,
    "max_bucket_reso": AT_LEAST_1,
}


def check_range(name: str, value: Any, where: str | None = None) -> None:
    """Refuse a value of the numeric flag ``name`` outside its :data:`RANGES` entry (NaN included)."""
    allowed = RANGES.get(name)
    if allowed is None:
        return
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not allowed.admits(item):
            raise ConfigError(f"{where or '--' + name}: {item!r} is out of range; expected a value {allowed.describe()}")


def field_defaults() -> dict[str, Any]:
    """name -> default of every TrainArgs field."""
    return {f.name: f.default for f in fields(TrainArgs) if f.default is not MISSING}


def field_specs() -> dict[str, dict[str, Any]]:
    """name -> field metadata (help, type, kind, choices) of every TrainArgs field."""
    return {f.name: dict(f.metadata) for f in fields(TrainArgs)}
