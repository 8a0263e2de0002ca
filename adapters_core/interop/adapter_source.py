"""Read any adapter a user has: kohya/LyCORIS files, diffusers LoRAs and PEFT adapters.

Every command that reads an adapter goes through :func:`read_adapter_file`: kohya-keyed
files (adapt's, sd-scripts', LyCORIS's) come back as they are; a diffusers LoRA (a file
with ``unet.``/``text_encoder.``/``text_encoder_2.`` keys, or a folder holding
``pytorch_lora_weights.safetensors``) and a PEFT adapter (a folder with
``adapter_config.json``, per component or not, or its ``adapter_model.safetensors``) are
turned into kohya module names with module-relative LoRA tensors through the same mapping
``adapt convert`` uses (:mod:`adapters_core.interop.convert_formats`), so reading such a file
directly gives exactly what converting it first would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adapters_core.choices import LORA_FORMATS
from adapters_core.errors import ConfigError, FormatError
from adapters_core.formats import AdapterFile, load_adapter
from adapters_core.interop.convert_formats import (
    detect_format,
    diffusers_lora_set,
    keys_format,
    read_diffusers,
    read_peft,
)
from adapters_core.interop.lora_set import LoRASet, kohya_state_dict, lora_set_from_kohya, renamed
from adapters_core.models.structure import ModelStructure, naming_structure_for

FORMATS = LORA_FORMATS


@dataclass
class SourceAdapter(AdapterFile):
    """An adapter file's tensors under kohya keys; ``source_format`` says how it was stored."""

    source_format: str = "kohya"


def read_lora_as_written(source: Path, source_format: str = "auto") -> LoRASet:
    """A LoRA file or folder in any supported format (``auto`` detects it), module names as
    its format spells them."""
    if not source.exists():
        raise FormatError(f"{source}: no such file or folder")
    fmt = detect_format(source) if source_format == "auto" else source_format
    if fmt == "kohya":
        loaded = load_adapter(source)
        return lora_set_from_kohya(loaded.tensors, loaded.metadata, str(source))
    if fmt == "diffusers":
        return read_diffusers(source)
    if fmt == "peft":
        return read_peft(source)
    raise ConfigError(f"--from {source_format}: expected auto, {', '.join(FORMATS)}")


def read_lora(
    path: str | os.PathLike[str], source_format: str = "auto", structure: ModelStructure | None = None
) -> LoRASet:
    """A LoRA file or folder in any supported format, modules under the standard kohya names
    of ``structure`` (default: the naming structure of the family the file's names fit)."""
    lora = read_lora_as_written(Path(path), source_format)
    naming = structure or naming_structure_for(lora.modules, lora.metadata)
    return renamed(lora, naming.aliases, str(path))


def _as_kohya(path: Path, lora: LoRASet, fmt: str) -> SourceAdapter:
    return SourceAdapter(path, kohya_state_dict(lora), dict(lora.metadata), fmt)


def read_adapter_file(path: str | os.PathLike[str]) -> SourceAdapter:
    """The tensors of the adapter at ``path`` under kohya keys (``<module>.<key>``), whatever
    tool wrote it."""
    source = Path(path)
    if source.is_dir():
        fmt = detect_format(source)
        return _as_kohya(source, read_lora_as_written(source, fmt), fmt)
    loaded = load_adapter(source)
    layout = keys_format(list(loaded.tensors))
    if layout == "diffusers":
        return _as_kohya(source, diffusers_lora_set(loaded.tensors, loaded.metadata, source), layout)
    if layout == "peft":
        return _as_kohya(source, read_peft(source), layout)
    return SourceAdapter(loaded.path, loaded.tensors, loaded.metadata)
