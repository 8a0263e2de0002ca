"""The layer structure of a base model without its weights, for ``check`` and ``convert``.

Checking an adapter against a model or converting its key names needs the model's layer
names and shapes, not its weights. The U-Net and text encoder are therefore built on the
``meta`` device: from the bundled SD configs (``sd_v1``, ``sd_v2``, ``sd_v2_v``, ``tiny``),
from a Diffusers folder's ``config.json`` files, or from the architecture a single-file
checkpoint's tensor shapes reveal (only a safetensors header is read; a pickled ``.ckpt``
has to be loaded). Building SD 1.5 this way takes about a second and allocates nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from adapters_core.errors import ModelLoadError
from adapters_core.formats import SAFETENSORS_SUFFIX, read_safetensors_header
from adapters_core.matching import loadable_targets
from adapters_core.metadata import flags_from_metadata
from adapters_core.models.bundled import config_name_for
from adapters_core.targets import Target, text_encoder_module_path

# Names accepted by ``--model`` besides paths, and the bundled config set each one means.
BUILTIN_MODELS: dict[str, str] = {
    "sd_v1": "sd_v1", "sd1": "sd_v1", "sd15": "sd_v1",
    "sd_v2": "sd_v2", "sd2": "sd_v2",
    "sd_v2_v": "sd_v2_v", "sd2-v": "sd_v2_v", "sd2v": "sd_v2_v",
    "tiny": "tiny",
}

@dataclass
class ModelStructure:
    """U-Net and text encoder of one architecture (weights on ``meta`` unless loaded).

    Every Linear and Conv2d layer is known by its kohya module name (standard spelling):
    :meth:`module_path` is its path as the installed libraries name it, :meth:`format_path`
    the version-independent path adapter files use.
    """

    name: str
    unet: nn.Module | None
    text_encoder: nn.Module | None
    v2: bool = False

    @cached_property
    def targets(self) -> dict[str, Target]:
        """Every layer an adapter file may adapt, by kohya name (:func:`loadable_targets`)."""
        return {t.name: t for t in loadable_targets(self.unet, self.text_encoder)}

    @cached_property
    def _layers(self) -> dict[str, tuple[str, str]]:
        """kohya module name -> (component, path in the installed model class)."""
        return {name: (target.component, target.module_path) for name, target in self.targets.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._layers

    def component(self, name: str) -> str:
        """``unet`` or ``text_encoder`` for a known kohya module name."""
        return self._layers[name][0]

    def module_path(self, name: str) -> str:
        """The module's path as the installed libraries name it (what PEFT keys use)."""
        return self._layers[name][1]

    def format_path(self, name: str) -> str:
        """The file-format path of a module: text-encoder paths always start with ``text_model.``."""
        component, path = self._layers[name]
        return text_encoder_module_path(path) if component == "text_encoder" else path

    def layer(self, name: str) -> nn.Module:
        component, path = self._layers[name]
        root = self.unet if component == "unet" else self.text_encoder
        assert root is not None
        return root.get_submodule(path)


def _builtin(config_name: str) -> ModelStructure:
    from adapters_core.models.tiny import (  # diffusers and transformers only when a model is built
        build_sd2_text_encoder,
        build_sd2_unet,
        build_sd15_text_encoder,
        build_sd15_unet,
        build_tiny_model,
    )

    if config_name == "tiny":
        tiny = build_tiny_model()
        return ModelStructure("tiny", tiny.unet, tiny.text_encoder)
    if config_name == "sd_v1":
        return ModelStructure("sd_v1", build_sd15_unet("meta"), build_sd15_text_encoder("meta"))
    unet = build_sd2_unet("meta", v_parameterization=config_name == "sd_v2_v")
    return ModelStructure(config_name, unet, build_sd2_text_encoder("meta"), True)


def _from_diffusers_folder(folder: Path) -> ModelStructure:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder}: folder has no model_index.json; expected a Diffusers model folder")
    try:
        unet_config = UNet2DConditionModel.load_config(folder / "unet")
        te_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder}: cannot read its unet/text_encoder configs ({error})") from None
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = CLIPTextModel(te_config)
    v2 = unet.config.cross_attention_dim == 1024
    return ModelStructure(str(folder), unet, text_encoder, v2)


def _header_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Empty ``meta`` tensors with the shapes a safetensors header declares (no data read)."""
    header = read_safetensors_header(path)
    return {
        key: torch.empty(info["shape"], device="meta")
        for key, info in header.items()
        if key != "__metadata__" and isinstance(info, dict)
    }


def _from_single_file(path: Path) -> ModelStructure:
    from adapters_core.models.loader import detect_architecture
    from adapters_core.models.single_file import read_checkpoint

    tensors = _header_tensors(path) if path.suffix.lower() == SAFETENSORS_SUFFIX else read_checkpoint(path)[0]
    architecture = detect_architecture(tensors, path)
    structure = _builtin(architecture)  # sd_v2 and sd_v2_v have the same layers
    structure.name = str(path)
    return structure


def model_structure(model: str | os.PathLike[str]) -> ModelStructure:
    """The structure of ``model``: a built-in name (``sd_v1``, ``sd_v2``, ``sd_v2_v``, ``tiny``),
    a Diffusers folder or a single-file checkpoint."""
    if str(model) in BUILTIN_MODELS:
        return _builtin(BUILTIN_MODELS[str(model)])
    path = Path(model)
    if path.is_dir():
        return _from_diffusers_folder(path)
    if path.is_file():
        return _from_single_file(path)
    raise ModelLoadError(
        f"--model {model}: no such file or folder, and not one of {', '.join(sorted(set(BUILTIN_MODELS.values())))}"
    )


def structure_from_metadata(metadata: Mapping[str, str]) -> ModelStructure:
    """The bundled SD architecture an adapter file's metadata names (SD 1.x when it names none)."""
    v2, v_param = flags_from_metadata(metadata)
    return _builtin(config_name_for(v2, v_param))


def naming_structure() -> ModelStructure:
    """Every module name SD 1.x and 2.x share, for renaming keys without a model: the SD U-Net
    (both versions name their layers alike) with the 23-layer SD 2.x text encoder (whose
    names include SD 1.x's 12 layers)."""
    from adapters_core.models.tiny import build_sd2_text_encoder, build_sd15_unet

    return ModelStructure("SD 1.x/2.x names", build_sd15_unet("meta"), build_sd2_text_encoder("meta"))
