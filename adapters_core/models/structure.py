"""The layer structure of a base model without its weights, for ``check`` and ``convert``.

Checking an adapter against a model or converting its key names needs the model's layer
names and shapes, not its weights. A bundled model (``--model sd_v1``, a name some installed
family answers to; the family a single-file checkpoint's tensor shapes reveal, reading only
a safetensors header; the family an adapter's metadata names) comes from the family's layer
table (:mod:`adapters_core.layer_table`: shipped as data by the built-in families, so no
model library is imported); a Diffusers folder's components are built on the ``meta``
device from its ``config.json`` files, which allocates nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from torch import nn

from adapters_core.errors import ModelLoadError
from adapters_core.family import ModelFamily
from adapters_core.keys import normalize_module_name
from adapters_core.layer_table import LayerTable, bundled_layer_table
from adapters_core.metadata import family_from_metadata
from adapters_core.plugins import get_registry
from adapters_core.targets import Target, text_encoder_module_path


def builtin_model_names() -> dict[str, tuple[ModelFamily, bool]]:
    """Names ``--model`` accepts besides paths: each installed family's bundled models
    (``sd_v1``, ``sd2-v``, ``tiny`` ...) -> (family, v-prediction)."""
    names: dict[str, tuple[ModelFamily, bool]] = {}
    for family in get_registry().families.values():
        for name, v_prediction in family.model_names.items():
            names.setdefault(name, (family, v_prediction))
    return names


@dataclass
class ModelStructure:
    """The adaptable layers of one architecture, from its :class:`LayerTable`.

    Every Linear and Conv2d layer is known by its kohya module name (standard spelling):
    :meth:`module_path` is its path as the installed libraries name it, :meth:`format_path`
    the version-independent path adapter files use.
    """

    name: str
    family: ModelFamily
    table: LayerTable
    v_prediction: bool = False

    @cached_property
    def targets(self) -> dict[str, Target]:
        """Every layer an adapter file may adapt, by kohya name (stand-in layers on ``meta``)."""
        return {t.name: t for t in self.table.targets()}

    @cached_property
    def aliases(self) -> dict[str, str]:
        """Other spellings of module names files use (:meth:`ModelFamily.module_aliases`)."""
        return dict(self.table.aliases)

    def __contains__(self, name: str) -> bool:
        return name in self.targets

    def component(self, name: str) -> str:
        """The component (``unet``, ``text_encoder`` ...) of a known kohya module name."""
        return self.targets[name].component

    def module_path(self, name: str) -> str:
        """The module's path as the installed libraries name it (what PEFT keys use)."""
        return self.targets[name].module_path

    def format_path(self, name: str) -> str:
        """The file-format path of a module: text-encoder paths always start with ``text_model.``."""
        target = self.targets[name]
        return text_encoder_module_path(target.module_path) if target.is_text_encoder else target.module_path

    def layer(self, name: str) -> nn.Module:
        return self.targets[name].layer


def _builtin(family: ModelFamily, v_prediction: bool, name: str) -> ModelStructure:
    return ModelStructure(name, family, bundled_layer_table(family.name), v_prediction)


def _from_diffusers_folder(folder: Path) -> ModelStructure:
    from adapters_core.models.loader import detect_family

    family = detect_family(folder)
    components: dict[str, nn.Module | None] = dict(family.build_components(device="meta", folder=folder))
    return ModelStructure(str(folder), family, LayerTable.of(family, components))


def _from_single_file(path: Path) -> ModelStructure:
    from adapters_core.models.loader import detect_family

    return _builtin(detect_family(path), False, str(path))


def model_structure(model: str | os.PathLike[str]) -> ModelStructure:
    """The structure of ``model``: a bundled model's name (``sd_v1``, ``sd_v2``, ``sd_v2_v``,
    ``tiny``, ... as the installed families name them), a Diffusers folder or a single-file
    checkpoint."""
    builtin = builtin_model_names()
    if str(model) in builtin:
        family, v_prediction = builtin[str(model)]
        return _builtin(family, v_prediction, str(model))
    path = Path(model)
    if path.is_dir():
        return _from_diffusers_folder(path)
    if path.is_file():
        return _from_single_file(path)
    raise ModelLoadError(f"--model {model}: no such file or folder, and not one of {', '.join(sorted(builtin))}")


def structure_from_metadata(metadata: Mapping[str, str]) -> ModelStructure:
    """The bundled model of the family an adapter file's metadata names (SD 1.x when it names none)."""
    family, v_prediction = family_from_metadata(metadata)
    return _builtin(family, v_prediction, family.base_model_version(v_prediction))


def _shares_sd_names(family: ModelFamily) -> bool:
    """Whether ``family`` names its modules as SD 1.x/2.x do (the same components)."""
    return family.components == get_registry().family_for_components(["unet", "text_encoder"]).components


@functools.cache
def naming_structure(family_name: str | None = None) -> ModelStructure:
    """The module names of a family, for renaming keys without a model (built once).

    SD 1.x and 2.x (and families with their components) share one: the SD U-Net (both
    versions name their layers alike) with the 23-layer SD 2.x text encoder (whose names
    include SD 1.x's 12 layers). Any other family: its bundled model (SDXL 1.0's names
    include the tiny SDXL's)."""
    registry = get_registry()
    if family_name is not None and not _shares_sd_names(registry.family(family_name)):
        return _builtin(registry.family(family_name), False, f"{family_name} names")
    sd1 = registry.family_for_components(["unet", "text_encoder"])
    v2_families = [family for family in registry.families.values() if family.kohya_v2] or [sd1]
    table = bundled_layer_table(sd1.name).only(["unet"]) + bundled_layer_table(v2_families[0].name).only(["text_encoder"])
    return ModelStructure("SD 1.x/2.x names", sd1, table)


def _has_prefixes(family: ModelFamily, names: list[str]) -> bool:
    prefixes = tuple(f"{component.kohya_prefix}_" for component in family.components)
    return all(name.startswith(prefixes) for name in names)


def naming_structure_for(names: Iterable[str], metadata: Mapping[str, str]) -> ModelStructure:
    """The naming structure a file's modules are read in when no model is given: the first
    installed family (one its metadata claims first) whose component prefixes start every name
    and whose names include them all (LDM/diffusers spellings as the family reads them);
    the first family with the prefixes when none has every name (the caller reports the rest)."""
    wanted = list(names)
    fitting = [family for family in get_registry().families.values() if _has_prefixes(family, wanted)]
    fitting.sort(key=lambda family: not family.claims_metadata(metadata))
    tried: list[ModelStructure] = []
    for family in fitting:
        structure = naming_structure(None if _shares_sd_names(family) else family.name)
        if any(structure is seen for seen in tried):
            continue
        tried.append(structure)
        if all(normalize_module_name(name, structure.aliases) in structure for name in wanted):
            return structure
    return tried[0] if tried else naming_structure()
