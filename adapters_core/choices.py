"""The names commands offer as choices, importable without torch (so ``--help`` and argument
errors answer at once). The modules that act on a choice import it from here."""

from __future__ import annotations

LORA_FORMATS = ("kohya", "diffusers", "peft")
"""``adapt convert --to``: kohya keys, diffusers' ``save_lora_weights`` layout, PEFT folders."""

DIFFUSERS_LAYOUTS = ("peft", "comfyui")
"""``adapt convert --to diffusers --layout``: PEFT's ``lora_A``/``lora_B`` keys, or the attention
processor keys (``processor.to_q_lora``) that ComfyUI places too."""

PRECISION_NAMES = ("float", "fp16", "bf16")
"""``--precision`` / ``--save_precision`` / ``--dtype`` of the tools."""

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
"""Weights saved with ``torch.save`` (read with ``weights_only=True``)."""

INPUT_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
"""What a weights file any command reads (an adapter or a model checkpoint) may be called; the
suffix decides how it is read (:func:`adapters_core.formats.is_safetensors`)."""

ADAPTER_OUTPUT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
"""What an adapter output may be called (``--save_to`` of merge, svd-merge, resize, extract)."""

CHECKPOINT_OUTPUT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
"""A merged checkpoint written as one file in the original layout (any other name is a Diffusers folder)."""

SVD_METHODS = ("exact", "randomized")
"""``extract --svd``: the full SVD, or a randomized sketch (Halko et al.)."""

DEFAULT_SVD = "randomized"
"""Within 1% of the exact truncation on the benchmark models, at a fraction of the time."""

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
"""``resize --dynamic_method``: kohya's rules for a per-module rank."""

GRID_AXIS_KINDS = ("adapter", "mul", "blocks", "prompt", "seed", "steps", "cfg", "sampler")
"""``adapt grid --x/--y/--z KIND=VALUES``: what an axis of the grid varies."""

SAMPLER_NAMES = ("ddim", "pndm", "euler", "euler_a", "dpmsolver++", "dpm", "lms", "ddpm", "heun")
"""``generate --sampler`` / ``--sample_sampler``: the diffusers schedulers adapt builds."""

# Image files a dataset folder may hold (training reads them, resize-images converts them).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
