"""``adapt check``: where each module of an adapter file applies in a model, and what loads nowhere.

A module is matched exactly as :meth:`Network.from_weights` would load it (same name
normalisation, same per-type hooks, same tensor fitting), but against a model built on the
``meta`` device, so checking against SD 1.5 reads no weights. Keys that would be skipped get
a reason: no such layer (with the closest name), a layer that is no adapter target, tensors
of another shape (another base model or rank), or suffixes the type does not know.

Separately, :attr:`CheckReport.diffusers_issues` lists why diffusers' ``load_lora_weights``
would load the file wrongly or not at all (see reference/interop.md), even when adapt
loads it fine.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters_core.errors import ShapeMismatchError
from adapters_core.formats import load_adapter
from adapters_core.keys import ldm_unet_aliases, normalize_module_name
from adapters_core.lora_set import diffusers_alpha_problem
from adapters_core.module import load_module_tensors
from adapters_core.network import split_module_keys
from adapters_core.options import resolve_options
from adapters_core.plugins import Registry, get_registry
from adapters_core.structure import ModelStructure, model_structure, structure_from_metadata
from adapters_core.targets import TEXT_ENCODER_PREFIX, UNET_PREFIX, Target, block_label

_LDM_PARTS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")



@dataclass
class ModuleMatch:
    """One module of the file and the layer it applies to."""

    module: str
    layer: str
    block: str
    layer_kind: str
    shape: list[int]
    rank: int | None
    alpha: float | None
    keys: int
    reshaped: bool = False  # 2-D file tensors for a conv layer or 4-D ones for a Linear


@dataclass
class UnmatchedKey:
    key: str
    block: str
    reason: str


@dataclass
class CheckReport:
    adapter: str
    model: str
    network_type: str | None
    matched: list[ModuleMatch] = field(default_factory=list)
    unmatched: list[UnmatchedKey] = field(default_factory=list)
    diffusers_issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unmatched

    def blocks(self) -> dict[str, dict[str, int]]:
        """Per block label: modules matched and keys unmatched."""
        summary: dict[str, dict[str, int]] = {}
        for match in self.matched:
            summary.setdefault(match.block, {"modules": 0, "unmatched_keys": 0})["modules"] += 1
        for miss in self.unmatched:
            summary.setdefault(miss.block, {"modules": 0, "unmatched_keys": 0})["unmatched_keys"] += 1
        return dict(sorted(summary.items(), key=lambda item: _label_order(item[0])))

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "model": self.model,
            "network_type": self.network_type,
            "ok": self.ok,
            "modules": [asdict(match) for match in self.matched],
            "unmatched": [asdict(miss) for miss in self.unmatched],
            "blocks": self.blocks(),
            "diffusers_issues": self.diffusers_issues,
        }


def _label_order(label: str) -> tuple[int, str]:
    order = {"TE": 0, "MID": 2, "UNET": 4, "OTHER": 5}
    if label.startswith("IN"):
        return 1, label
    if label.startswith("OUT"):
        return 3, label
    return order.get(label, 6), label


def _no_layer_reason(raw_name: str, name: str, structure: ModelStructure) -> str:
    if raw_name.startswith(("lora_te1_", "lora_te2_")):
        return "SDXL text-encoder module; SD 1.x/2.x models have one text encoder (lora_te_)"
    if not raw_name.startswith((UNET_PREFIX + "_", TEXT_ENCODER_PREFIX + "_")):
        return "unknown prefix; expected lora_unet_ or lora_te_"
    if name in structure:
        return f"layer {structure.format_path(name)} exists but is no adapter target"
    if raw_name.startswith(_LDM_PARTS) and name == raw_name:
        return f"LDM-style name that maps to no layer of {structure.name}"
    close = difflib.get_close_matches(name, list(structure.targets), n=1, cutoff=0.8)
    hint = f" (closest: {close[0]})" if close else ""
    return f"no such layer in {structure.name}{hint}"


def _layer_path(structure: ModelStructure, target: Target) -> str:
    return f"{target.component}.{structure.format_path(target.name)}"


class _Checker:
    """Matches one file's modules against one model structure for one network type."""

    def __init__(self, registry: Registry, network: str, structure: ModelStructure) -> None:
        self.hook = registry.hook
        self.network = network
        self.structure = structure
        self.options = resolve_options(registry.get(network), {})
        self.aliases = ldm_unet_aliases(structure.unet, structure.targets.values())

    def module_options(self, name: str, target: Target, parts: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        per_module = self.hook.module_options_from_tensors(network=self.network, name=name, tensors=parts)
        if per_module is None:
            return None
        return {**self.options, **per_module, "from_weights": True, "block_index": target.block_index,
                "layer_kind": target.layer_kind, "in_conv_block": target.in_conv_block}

    def check(self, raw_name: str, parts: Mapping[str, torch.Tensor], report: CheckReport) -> None:
        name = normalize_module_name(raw_name, self.aliases)
        label = block_label(name)

        def miss(keys: list[str], reason: str) -> None:
            report.unmatched += [UnmatchedKey(f"{raw_name}.{key}", label, reason) for key in sorted(keys)]

        target = self.structure.targets.get(name)
        if target is None:
            miss(list(parts), _no_layer_reason(raw_name, name, self.structure))
            return
        options = self.module_options(name, target, parts)
        if options is None:
            miss(list(parts), f"not a {self.network} module (keys: {', '.join(sorted(parts))})")
            return
        expected = self.hook.state_dict_keys(network=self.network, name=name, layer=target.layer, options=options)
        suffixes = {key[len(name) + 1:] for key in expected or []}
        unknown = sorted(set(parts) - suffixes)
        if unknown:
            miss(unknown, f"unknown suffix for {self.network} (expected {', '.join(sorted(suffixes))})")
        module = self.hook.create_module(network=self.network, name=name, layer=target.layer, options=options)
        if not isinstance(module, nn.Module):
            miss(list(parts), f"{self.network} does not adapt {target.layer_kind} layers")
            return
        known = {key: tensor for key, tensor in parts.items() if key in suffixes}
        try:
            load_module_tensors(module, raw_name, known)
        except ShapeMismatchError as error:
            miss(list(known), str(error))
            return
        own = module.state_dict()
        report.matched.append(
            ModuleMatch(
                module=raw_name,
                layer=_layer_path(self.structure, target),
                block=label,
                layer_kind=target.layer_kind,
                shape=list(target.layer.weight.shape),
                rank=options.get("dim"),
                alpha=options.get("alpha"),
                keys=len(known),
                reshaped=any(tensor.dim() != own[key].dim() for key, tensor in known.items()),
            )
        )


def diffusers_issues(raw_names: list[str], keys: frozenset[str], report: CheckReport) -> list[str]:
    """Why diffusers' SD 1.x/2.x LoRA loader would load this file wrongly or not at all."""
    if not any(key.endswith(".lora_down.weight") for key in keys):
        return [f"diffusers loads only kohya LoRA keys (lora_down/lora_up/alpha); this is a {report.network_type} file"]
    issues: list[str] = []
    ldm = [name for name in raw_names if name.startswith(_LDM_PARTS)]
    if ldm:
        issues.append(
            f"{len(ldm)} U-Net modules use LDM names (e.g. {ldm[0]}), which diffusers' SD 1.x/2.x loader "
            "fails on; `adapt convert --to kohya` renames them"
        )
    no_text_model = [n for n in raw_names if n.startswith("lora_te_") and not n.startswith("lora_te_text_model_")]
    if no_text_model:
        issues.append(
            f"{len(no_text_model)} text-encoder modules lack text_model_ (e.g. {no_text_model[0]}): A1111, "
            "ComfyUI and diffusers under transformers 4 skip them; `adapt convert --to kohya` renames them"
        )
    reshaped = [match for match in report.matched if match.reshaped]
    if reshaped:
        issues.append(
            f"{len(reshaped)} modules store {'4-D' if reshaped[0].layer_kind == 'linear' else '2-D'} weights for "
            f"{reshaped[0].layer_kind} layers (e.g. {reshaped[0].module}): adapt reshapes them, diffusers fails "
            "with a size mismatch"
        )
    alphas = {
        match.module: ("conv3x3" if match.layer_kind == "conv3x3" else "linear", float(match.alpha))
        for match in report.matched
        if match.alpha is not None
    }
    problem = diffusers_alpha_problem(alphas)
    if problem is not None:
        issues.append(f"{problem}; `adapt convert --to kohya` folds the alphas so every reader agrees")
    return issues


def check_adapter(
    adapter: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    registry: Registry | None = None,
) -> CheckReport:
    """Check ``adapter`` against ``model`` (a path or built-in name; default: the base model the
    file's metadata names, SD 1.x if none)."""
    loaded = load_adapter(adapter)
    structure = model_structure(model) if model is not None else structure_from_metadata(loaded.metadata)
    registry = registry or get_registry()
    keys = frozenset(loaded.tensors)
    network = registry.hook.detect_network(keys=keys, metadata=loaded.metadata)
    report = CheckReport(str(Path(adapter)), structure.name, network)
    grouped = split_module_keys(loaded.tensors)
    if network is None:
        report.unmatched = [
            UnmatchedKey(key, block_label(key.partition(".")[0]), "no installed network type recognises this file")
            for key in sorted(keys)
        ]
        return report
    checker = _Checker(registry, network, structure)
    for raw_name in sorted(grouped):
        checker.check(raw_name, grouped[raw_name], report)
    report.diffusers_issues = diffusers_issues(sorted(grouped), keys, report)
    return report
