"""``adapt check``: where each module of an adapter file applies in a model, and what loads nowhere.

A module is matched by the code that loads it (:class:`~adapters_core.matching.ModuleMatcher`,
which :meth:`Network.from_weights` calls too), against a model built on the ``meta`` device,
so checking against SD 1.5 reads no weights. The file may be in any format
:func:`~adapters_core.interop.adapter_source.read_adapter_file` reads (kohya, LyCORIS, diffusers,
PEFT). Keys that would load nowhere get a reason: no such layer (with the closest name),
tensors of another shape (another base model or rank), or suffixes the type does not know.
A module carrying a feature no installed type implements (DoRA, Tucker, LoKr, ...) is an
error, as it is for loading.

Separately, :attr:`CheckReport.diffusers_issues` lists why diffusers' ``load_lora_weights``
would load the file wrongly or not at all (see reference/interop.md), even when adapt
loads it fine.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters_core.errors import FormatError
from adapters_core.features import UnsupportedFeatureError
from adapters_core.interop.adapter_source import read_adapter_file
from adapters_core.interop.lora_set import diffusers_alpha_problem
from adapters_core.matching import LDM_PARTS, ModuleMatcher, detect_file_network
from adapters_core.models.structure import ModelStructure, model_structure, structure_from_metadata
from adapters_core.network import split_module_keys
from adapters_core.plugins import Registry, get_registry
from adapters_core.targets import Target, block_label, layer_weight


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


def _layer_path(structure: ModelStructure, target: Target) -> str:
    return f"{target.component}.{structure.format_path(target.name)}"


def diffusers_issues(
    raw_names: list[str], keys: frozenset[str], report: CheckReport, standard: Collection[str] = ()
) -> list[str]:
    """Why diffusers' LoRA loader would load this file wrongly or not at all. ``standard``: the
    model family's own module names (LDM-style ones are SDXL's standard, which diffusers reads)."""
    if not any(key.endswith(".lora_down.weight") for key in keys):
        return [f"diffusers loads only kohya LoRA keys (lora_down/lora_up/alpha); this is a {report.network_type} file"]
    issues: list[str] = []
    ldm = [name for name in raw_names if name.startswith(LDM_PARTS) and name not in standard]
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
    """Check ``adapter`` (any format :func:`read_adapter_file` reads) against ``model`` (a path or
    built-in name; default: the base model the file's metadata names, SD 1.x if none)."""
    loaded = read_adapter_file(adapter)
    structure = model_structure(model) if model is not None else structure_from_metadata(loaded.metadata)
    registry = registry or get_registry()
    keys = frozenset(loaded.tensors)
    grouped = split_module_keys(loaded.tensors)
    layout = structure.family.blocks
    try:
        network = detect_file_network(registry, loaded.tensors, loaded.metadata, adapter)
    except UnsupportedFeatureError:
        raise
    except FormatError:
        report = CheckReport(str(Path(adapter)), structure.name, None)
        report.unmatched = [
            UnmatchedKey(key, block_label(key.partition(".")[0], layout), "no installed network type recognises this file")
            for key in sorted(keys)
        ]
        return report
    report = CheckReport(str(Path(adapter)), structure.name, network)
    matcher = ModuleMatcher(
        registry, network, structure.family, structure.targets, structure.aliases, structure.name, adapter
    )
    for raw_name in sorted(grouped):
        match, misses = matcher.match(raw_name, grouped[raw_name])
        report.unmatched += [UnmatchedKey(miss.key, block_label(miss.name, layout), miss.reason) for miss in misses]
        if match is not None:
            target = match.target
            report.matched.append(
                ModuleMatch(
                    module=raw_name,
                    layer=_layer_path(structure, target),
                    block=block_label(target.name, layout),
                    layer_kind=target.layer_kind,
                    shape=list(layer_weight(target.layer).shape),
                    rank=match.spec.rank,
                    alpha=match.spec.alpha,
                    keys=match.keys,
                    reshaped=match.reshaped,
                )
            )
    report.diffusers_issues = diffusers_issues(sorted(grouped), keys, report, structure.targets.keys())
    return report
