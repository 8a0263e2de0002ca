"""Reading and writing the diffusers and PEFT LoRA formats (the math is in :mod:`lora_set`).

- diffusers: one safetensors file (or a folder holding ``pytorch_lora_weights.safetensors``)
  with ``unet.<path>.lora_A.weight``/``lora_B.weight`` and
  ``text_encoder.text_model.<path>...`` keys, as ``save_lora_weights`` writes them. No alpha:
  alpha/rank is folded into ``lora_B``. Reading also accepts the older
  ``lora.down.weight``/``lora_linear_layer.up.weight`` spellings, per-module ``.alpha`` keys
  and the ``lora_adapter_metadata`` LoRA config diffusers 0.33+ may store. Two key layouts are
  written (:data:`DIFFUSERS_LAYOUTS`): ``peft`` (``unet.<path>.lora_A.weight``, what
  ``save_lora_weights`` writes today) and ``comfyui`` (the older attention-processor layout:
  ``unet.<attn>.processor.to_q_lora.down.weight``, ``unet.<path>.lora.down.weight``), which
  diffusers reads too and the only one whose U-Net attention modules ComfyUI places.
  ``text_encoder_2.`` keys (SDXL) read as ``lora_te2_`` modules.
- PEFT: a folder with ``unet/`` and/or ``text_encoder/``, each holding ``adapter_config.json``
  and ``adapter_model.safetensors`` (keys ``base_model.model.<path>.lora_A.weight``), as
  ``PeftModel.save_pretrained`` writes them. Paths are those of the installed model classes
  (transformers 5 names the CLIP layers ``encoder.layers.N...``, 4.x ``text_model.encoder...``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adapters_core.atomic import atomic_path
from adapters_core.errors import FormatError
from adapters_core.features import UnsupportedFeatureError, feature_of
from adapters_core.formats import SAFETENSORS_SUFFIX, load_adapter, read_safetensors_header, save_adapter
from adapters_core.interop.lora_set import DOWN, UP, LoRASet, module_tensors
from adapters_core.keys import (
    DIFFUSERS_COMPONENTS,
    TEXT_ENCODER_COMPONENTS,
    UNET_COMPONENT,
    component_module_name,
    component_prefixes,
)
from adapters_core.models.structure import ModelStructure
from adapters_core.module import fit_tensor
from adapters_core.plugins import get_registry
from adapters_core.targets import layer_weight, text_encoder_module_path

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."

_PART_RE = re.compile(
    r"^(?P<path>.+?)\.(?:(?P<down>lora_A(?:\.\w+)?\.weight|lora\.down\.weight|lora_linear_layer\.down\.weight)"
    r"|(?P<up>lora_B(?:\.\w+)?\.weight|lora\.up\.weight|lora_linear_layer\.up\.weight)|(?P<alpha>alpha))$"
)
# The older attention-processor spelling: ``attn1.processor.to_q_lora.down.weight``.
_PROCESSOR_RE = re.compile(r"\.to_(?P<proj>q|k|v|out)_lora\.(?P<part>down|up)\.weight$")
_TE_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}
_ATTENTION_PATH_RE = re.compile(r"^(?P<attn>.+\.attn\d+)\.(?P<proj>to_q|to_k|to_v|to_out\.0)$")
Grouped = dict[tuple[str, str], dict[str, torch.Tensor]]


def _current_spelling(component: str, key: str) -> str:
    """A key of the older attention-processor layout in today's module paths
    (``attn1.processor.to_out_lora.up.weight`` -> ``attn1.to_out.0.lora.up.weight``)."""
    key = key.replace(".processor.", ".")
    match = _PROCESSOR_RE.search(key)
    if match is not None:
        proj = match.group("proj")
        if component in TEXT_ENCODER_COMPONENTS:
            layer = _TE_PROJECTIONS[proj]
        else:
            layer = "to_out.0" if proj == "out" else f"to_{proj}"
        return f"{key[: match.start()]}.{layer}.lora.{match.group('part')}.weight"
    return re.sub(r"\.to_out\.(?=lora)", ".to_out.0.", key) if component == UNET_COMPONENT else key


def _split_key(source: object, key: str, component: str = UNET_COMPONENT) -> tuple[str, str]:
    """``down_blocks.0...to_q.lora_A.weight`` -> (``down_blocks.0...to_q``, ``down``)."""
    match = _PART_RE.match(_current_spelling(component, key))
    if match is None:
        feature = feature_of(key)
        if feature is not None:
            raise UnsupportedFeatureError(
                f"{source}: {key}: {feature} is not implemented by any installed network type; nothing was applied"
            )
        raise FormatError(f"{source}: key {key}: expected <module>.lora_A.weight, .lora_B.weight or .alpha")
    part = next(name for name in ("down", "up", "alpha") if match.group(name))
    return match.group("path"), part


def peft_alpha(config: Mapping[str, Any] | None, path: str, rank: int) -> float:
    """The kohya alpha (scale x rank) of a module that PEFT scales by ``lora_alpha / r``
    (``/ sqrt(r)`` with rsLoRA), ``alpha_pattern`` matched as PEFT matches it; scale 1
    without a config (the diffusers convention)."""
    if config is None:
        return float(rank)
    alpha = float(config.get("lora_alpha", 8))  # PEFT's default
    candidates = (path, text_encoder_module_path(path)) if path.startswith("encoder.") else (path,)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if any(re.match(rf"(.*\.)?({pattern})$", candidate) for candidate in candidates):
            alpha = float(value)
            break
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return scale * rank


def _lora_set(grouped: Grouped, configs: Mapping[str, Mapping[str, Any] | None], fmt: str, source: str,
              metadata: Mapping[str, str]) -> LoRASet:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    prefixes = component_prefixes(component for component, _ in grouped)
    for (component, path), parts in grouped.items():
        if "down" not in parts or "up" not in parts:
            raise FormatError(f"{source}: module {path} has no lora_{'A' if 'down' not in parts else 'B'} weight")
        rank = int(parts["down"].shape[0])
        alpha = float(parts["alpha"]) if "alpha" in parts else peft_alpha(configs.get(component), path, rank)
        modules[component_module_name(prefixes[component], component, path)] = module_tensors(parts["down"], parts["up"], alpha)
    if not modules:
        raise FormatError(f"{source}: no LoRA modules found")
    return LoRASet(modules, dict(metadata), fmt)


def _check_peft_config(source: object, config: Mapping[str, Any]) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise FormatError(f"{source}: peft_type {config.get('peft_type')}: only LORA adapters can be converted")
    if config.get("use_dora"):
        raise UnsupportedFeatureError(
            f"{source}: use_dora: DoRA weight decomposition is not implemented by any installed network type; "
            "nothing was applied"
        )


def _diffusers_configs(source: object, metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per-component LoRA configs from diffusers' ``lora_adapter_metadata`` (``unet.r``, ...)."""
    if DIFFUSERS_METADATA_KEY not in metadata:
        return {}
    configs: dict[str, dict[str, Any]] = {}
    for key, value in json.loads(metadata[DIFFUSERS_METADATA_KEY]).items():
        component, _, name = key.partition(".")
        configs.setdefault(component, {})[name] = value
    for config in configs.values():
        _check_peft_config(source, config)
    return configs


def read_diffusers(path: Path) -> LoRASet:
    file = path / DIFFUSERS_WEIGHT_NAME if path.is_dir() else path
    loaded = load_adapter(file)
    return diffusers_lora_set(loaded.tensors, loaded.metadata, file)


def diffusers_lora_set(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], source: Path) -> LoRASet:
    """The modules of a diffusers LoRA state dict (``unet.``/``text_encoder.``/``text_encoder_2.`` keys)."""
    grouped: Grouped = {}
    for key, tensor in tensors.items():
        component, _, rest = key.partition(".")
        if component not in DIFFUSERS_COMPONENTS:
            raise FormatError(f"{source}: key {key}: expected keys starting with {', '.join(DIFFUSERS_COMPONENTS)}.")
        module_path, part = _split_key(source, rest, component)
        grouped.setdefault((component, module_path), {})[part] = tensor
    return _lora_set(grouped, _diffusers_configs(source, metadata), "diffusers", str(source), metadata)


def _guess_component(path: str) -> str:
    return "text_encoder" if path.startswith(("text_model.", "encoder.layers.")) else "unet"


def _peft_sources(path: Path) -> list[tuple[str | None, Path, dict[str, Any] | None]]:
    """(component or None, weights file, config or None) for a PEFT folder, sub-folder or file."""
    if path.is_file():
        config_file = path.parent / PEFT_CONFIG_NAME
        config = json.loads(config_file.read_text()) if config_file.is_file() else None
        return [(None, path, config)]
    folders: list[tuple[str | None, Path]] = [
        (component, path / component) for component in DIFFUSERS_COMPONENTS
        if (path / component / PEFT_CONFIG_NAME).is_file()
    ]
    if not folders and (path / PEFT_CONFIG_NAME).is_file():
        folders = [(None, path)]
    if not folders:
        raise FormatError(
            f"{path}: no {PEFT_CONFIG_NAME} in it or in {'/, '.join(DIFFUSERS_COMPONENTS)}/; not a PEFT adapter"
        )
    sources: list[tuple[str | None, Path, dict[str, Any] | None]] = []
    for component, folder in folders:
        weights = folder / PEFT_WEIGHTS_NAME
        if not weights.is_file():
            raise FormatError(f"{folder}: no {PEFT_WEIGHTS_NAME} (only safetensors PEFT adapters are read)")
        sources.append((component, weights, json.loads((folder / PEFT_CONFIG_NAME).read_text())))
    return sources


def read_peft(path: Path) -> LoRASet:
    grouped: Grouped = {}
    configs: dict[str, dict[str, Any] | None] = {}
    metadata: dict[str, str] = {}
    for component, weights, config in _peft_sources(path):
        if config is not None:
            _check_peft_config(weights.parent, config)
        loaded = load_adapter(weights)
        metadata.update(loaded.metadata)
        for key, tensor in loaded.tensors.items():
            owner = component or _guess_component(key.removeprefix(PEFT_KEY_PREFIX))
            module_path, part = _split_key(weights, key.removeprefix(PEFT_KEY_PREFIX), owner)
            configs[owner] = config
            grouped.setdefault((owner, module_path), {})[part] = tensor
    return _lora_set(grouped, configs, "peft", str(path), metadata)


def detect_format(path: Path) -> str:
    """``kohya``, ``diffusers`` or ``peft`` from a file's keys or a folder's contents."""
    if path.is_dir():
        if (path / DIFFUSERS_WEIGHT_NAME).is_file():
            return "diffusers"
        _peft_sources(path)
        return "peft"
    if path.suffix.lower() == SAFETENSORS_SUFFIX and path.is_file():
        keys = [key for key in read_safetensors_header(path) if key != "__metadata__"]
    else:
        keys = list(load_adapter(path).tensors)
    prefixes = kohya_prefixes()
    if keys and all(key.startswith(prefixes) for key in keys):
        return "kohya"
    fmt = keys_format(keys)
    if fmt is not None:
        return fmt
    sample = ", ".join(sorted(keys)[:2]) or "no tensors"
    raise FormatError(
        f"{path}: not a kohya ({'/'.join(prefixes)}), diffusers ({'/'.join(f'{c}.' for c in DIFFUSERS_COMPONENTS)}) or PEFT "
        f"(base_model.model.) LoRA; keys: {sample}"
    )


def kohya_prefixes() -> tuple[str, ...]:
    """The starts of kohya keys: every installed family's component prefixes (``lora_unet_``,
    ``lora_te_``, SDXL's ``lora_te1_``/``lora_te2_``)."""
    families = get_registry().families.values()
    return tuple(dict.fromkeys(f"{c.kohya_prefix}_" for family in families for c in family.components))


def keys_format(keys: list[str]) -> str | None:
    """``diffusers`` or ``peft`` when every key has that layout's prefix, else ``None``."""
    if keys and all(key.split(".", 1)[0] in DIFFUSERS_COMPONENTS for key in keys):
        return "diffusers"
    if keys and all(key.startswith(PEFT_KEY_PREFIX) for key in keys):
        return "peft"
    return None


def diffusers_module_keys(component: str, path: str, layout: str) -> tuple[str, str]:
    """The (down, up) keys of one module in a diffusers ``layout`` (see :data:`DIFFUSERS_LAYOUTS`)."""
    if layout == "comfyui" and component == UNET_COMPONENT:
        attention = _ATTENTION_PATH_RE.match(path)
        if attention is not None:
            proj = "to_out" if attention.group("proj") == "to_out.0" else attention.group("proj")
            base = f"{component}.{attention.group('attn')}.processor.{proj}_lora"
        else:
            base = f"{component}.{path}.lora"
        return f"{base}.down.weight", f"{base}.up.weight"
    return f"{component}.{path}.lora_A.weight", f"{component}.{path}.lora_B.weight"


def _factors(lora: LoRASet, structure: ModelStructure, name: str, fit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Down and up weights, reshaped to the model's layer (2-D for Linear, 4-D for conv) if ``fit``."""
    down, up = lora.modules[name][DOWN], lora.modules[name][UP]
    if not fit:
        return down, up
    weight = layer_weight(structure.layer(name))
    rank = down.shape[0]
    down_shape = torch.Size([rank, *weight.shape[1:]])
    up_shape = torch.Size([weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else [])])
    return fit_tensor(f"{name}.{DOWN}", down, down_shape), fit_tensor(f"{name}.{UP}", up, up_shape)


def write_diffusers(
    lora: LoRASet, structure: ModelStructure, path: str | os.PathLike[str], *, fit: bool,
    dtype: torch.dtype | None = None, overwrite: bool = False, layout: str = "peft",
) -> Path:
    """Write ``path`` (a ``.safetensors`` file, or a folder that gets ``pytorch_lora_weights.safetensors``)
    in the key ``layout`` (``peft`` or ``comfyui``)."""
    tensors: dict[str, torch.Tensor] = {}
    folded = 0
    for name in lora.modules:
        down, up = _factors(lora, structure, name, fit)
        scale = lora.scale(name)
        folded += scale != 1.0
        down_key, up_key = diffusers_module_keys(structure.component(name), structure.format_path(name), layout)
        tensors[down_key] = down
        tensors[up_key] = (up.float() * scale).to(up.dtype)
    metadata = {"format": "pt", **{k: v for k, v in lora.metadata.items() if k.startswith("modelspec.")}}
    target = Path(path)
    if target.suffix.lower() == SAFETENSORS_SUFFIX:
        save_adapter(target, tensors, metadata=metadata, dtype=dtype, overwrite=overwrite)
        written = target
    else:
        with atomic_path(target, overwrite=overwrite) as tmp:
            tmp.mkdir()
            save_adapter(tmp / DIFFUSERS_WEIGHT_NAME, tensors, metadata=metadata, dtype=dtype)
        written = target / DIFFUSERS_WEIGHT_NAME
    if folded:  # said once the file is written: a failed write leaves one error line alone
        log.info("%s: diffusers files carry no alpha; alpha/rank folded into lora_B of %d modules", written, folded)
    return written


def peft_config(lora: LoRASet, structure: ModelStructure, names: list[str]) -> dict[str, Any]:
    """A LoRA ``adapter_config.json`` whose ``rank_pattern``/``alpha_pattern`` (full paths) give
    every module its own rank and alpha."""
    rank = Counter(lora.rank(name) for name in names).most_common(1)[0][0]
    alpha = Counter(lora.alpha(name) for name in names).most_common(1)[0][0]
    paths = {name: structure.module_path(name) for name in names}
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {paths[n]: lora.rank(n) for n in names if lora.rank(n) != rank},
        "alpha_pattern": {paths[n]: lora.alpha(n) for n in names if lora.alpha(n) != alpha},
        "target_modules": sorted(paths.values()),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def write_peft(
    lora: LoRASet, structure: ModelStructure, folder: str | os.PathLike[str], *, fit: bool,
    dtype: torch.dtype | None = None, overwrite: bool = False,
) -> Path:
    """Write a PEFT adapter folder with ``unet/`` and/or ``text_encoder/``; alphas kept exactly."""
    by_component: dict[str, list[str]] = {}
    for name in lora.modules:
        by_component.setdefault(structure.component(name), []).append(name)
    target = Path(folder)
    with atomic_path(target, overwrite=overwrite) as tmp:
        for component, names in by_component.items():
            sub = tmp / component
            sub.mkdir(parents=True)
            config = peft_config(lora, structure, names)
            (sub / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            tensors: dict[str, torch.Tensor] = {}
            for name in names:
                down, up = _factors(lora, structure, name, fit)
                key = f"{PEFT_KEY_PREFIX}{structure.module_path(name)}"
                tensors[f"{key}.lora_A.weight"] = down
                tensors[f"{key}.lora_B.weight"] = up
            save_adapter(sub / PEFT_WEIGHTS_NAME, tensors, metadata={"format": "pt"}, dtype=dtype)
    return target
