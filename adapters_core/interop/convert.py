"""``adapt convert``: kohya <-> diffusers <-> PEFT LoRA files with identical math.

Reading goes through :class:`adapters_core.interop.lora_set.LoRASet` (see there for how each format
stores the scale). Module names need no model to convert, but paths do: without a model
the names of the installed family the file's names fit are used (SD 1.x/2.x share theirs;
SDXL's U-Net names are LDM-style, ``lora_unet_input_blocks_4_1_...``, its diffusers paths
``unet.down_blocks.1.attentions.0...``); with ``model`` the modules are also checked against that
model's layers and down/up weights are reshaped to them (2-D for Linear, 4-D for conv
layers, which matters for SD 2.x ``proj_in``/``proj_out``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters_core.choices import DIFFUSERS_LAYOUTS
from adapters_core.errors import ConfigError, FormatError
from adapters_core.family import ModelFamily
from adapters_core.interop.adapter_source import FORMATS, read_lora_as_written
from adapters_core.interop.convert_formats import write_diffusers, write_peft
from adapters_core.interop.lora_set import DOWN, UP, LoRASet, renamed, write_kohya
from adapters_core.models.structure import ModelStructure, model_structure, naming_structure_for
from adapters_core.ops.deltas import bundled_layer_shapes
from adapters_core.plugins import get_registry

log = logging.getLogger(__name__)

# Which loaders read each output (measured: diffusers 0.42 ``load_lora_weights``; ComfyUI's
# LoRA key map places diffusers keys only as ``unet.<attn>.processor.to_q...`` for attention).
READERS: dict[tuple[str, str | None], str] = {
    ("kohya", None): "A1111, ComfyUI, diffusers (load_lora_weights), sd-scripts and adapt read it",
    ("diffusers", "peft"): "diffusers (load_lora_weights) and adapt read it",
    ("diffusers", "comfyui"): "diffusers (load_lora_weights), ComfyUI and adapt read it",
    ("peft", None): "PEFT (PeftModel.from_pretrained on each component folder) and adapt read it",
}
COMFYUI_WARNING = (
    "ComfyUI ignores the U-Net attention modules (to_q/to_k/to_v/to_out) of the peft layout without an error; "
    "--layout comfyui writes keys that ComfyUI and diffusers both read"
)


@dataclass(frozen=True)
class ConvertResult:
    source_format: str
    output: Path
    modules: int
    readers: str  # which loaders read the output
    warning: str | None = None  # one line when a common loader would skip part of it


def _family_of(lora: LoRASet, naming: ModelStructure) -> ModelFamily:
    """The first installed family named like ``naming`` whose bundled model has every module of
    ``lora`` with the factors' input and output sizes (SD 2.x's cross attention reads 1024-wide
    contexts, SD 1.x's 768); the naming structure's family when none fits."""
    for family in get_registry().families.values():
        if family.components != naming.family.components:
            continue
        shapes = bundled_layer_shapes(family.name)
        if all(
            name in shapes
            and int(tensors[DOWN].shape[1]) == shapes[name][1]
            and int(tensors[UP].shape[0]) == shapes[name][0]
            for name, tensors in lora.modules.items()
        ):
            return family
    return naming.family


def _check_modules(source: object, lora: LoRASet, structure: ModelStructure) -> None:
    """Every module names a layer of ``structure``, or one line naming the first that does not."""
    unknown = sorted(name for name in lora.modules if name not in structure)
    if unknown:
        hint = structure.family.foreign_module_hint(unknown[0])
        raise FormatError(
            f"{source}: {len(unknown)} modules match no layer of {structure.name} (e.g. {unknown[0]}"
            f"{f': {hint}' if hint else ''}); `adapt check` lists them"
        )


def convert_lora(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    to: str,
    *,
    source_format: str = "auto",
    model: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    layout: str = "peft",
) -> ConvertResult:
    """Convert ``source`` to format ``to`` at ``output`` (a file for kohya, a ``.safetensors``
    file or folder for diffusers, a folder for PEFT)."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to}: expected one of {', '.join(FORMATS)}")
    structure = model_structure(model) if model is not None else None
    written_names = read_lora_as_written(Path(source), source_format)
    naming = structure or naming_structure_for(written_names.modules, written_names.metadata)
    lora = renamed(written_names, naming.aliases, str(source))
    if structure is not None or to != "kohya":
        _check_modules(source, lora, naming)
    if to == "kohya":
        family = structure.family if structure is not None else _family_of(lora, naming)
        write_kohya(lora, output, dtype=dtype, overwrite=overwrite, family=family)
        written = Path(output)
    elif to == "diffusers":
        if layout not in DIFFUSERS_LAYOUTS:
            raise ConfigError(f"--layout {layout}: expected one of {', '.join(DIFFUSERS_LAYOUTS)}")
        written = write_diffusers(
            lora, naming, output, fit=structure is not None, dtype=dtype, overwrite=overwrite, layout=layout
        )
    else:
        written = write_peft(lora, naming, output, fit=structure is not None, dtype=dtype, overwrite=overwrite)
    log.info("%s (%s) -> %s (%s): %d modules", source, lora.source_format, written, to, len(lora.modules))
    readers = READERS[(to, layout if to == "diffusers" else None)]
    warning = COMFYUI_WARNING if to == "diffusers" and layout == "peft" else None
    return ConvertResult(lora.source_format, written, len(lora.modules), readers, warning)
