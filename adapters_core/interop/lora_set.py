"""LoRA modules in one in-memory form, the hub of every format conversion.

:class:`LoRASet` maps kohya module names (standard spelling) to kohya module tensors
(``lora_down.weight``, ``lora_up.weight``, ``alpha``). A module adds
``(alpha/rank) * up @ down`` in every format:

- kohya: ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.
- diffusers (what ``save_lora_weights`` writes and ``load_lora_weights`` reads):
  ``unet.<path>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.text_model.<path>...``.
  There is no alpha (scale 1), so alpha/rank is folded into ``lora_B``.
- PEFT (what ``PeftModel.save_pretrained`` writes): a folder per component with
  ``adapter_config.json`` (``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern`` with
  full module paths, which PEFT applies exactly) and ``adapter_model.safetensors``
  (``base_model.model.<path>.lora_A.weight``); alphas are kept as they are.

diffusers' kohya loader gets per-module alphas wrong when Linear/1x1 modules differ in
alpha (see :func:`diffusers_alpha_problem`), so a kohya file written from such modules
gets alpha/rank folded into ``lora_up`` and alpha = rank: the same math for every reader.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from adapters_core.errors import FormatError
from adapters_core.family import ModelFamily
from adapters_core.formats import save_adapter
from adapters_core.keys import normalize_module_name
from adapters_core.lora_keys import ALPHA, DOWN, LORA_KEYS, UP, resolve_alpha
from adapters_core.metadata import network_metadata
from adapters_core.network import split_module_keys
from adapters_core.plugins import get_registry

log = logging.getLogger(__name__)


@dataclass
class LoRASet:
    """LoRA modules by kohya name, each with ``lora_down.weight``, ``lora_up.weight`` and a 0-d ``alpha``."""

    modules: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "kohya"

    def rank(self, name: str) -> int:
        return int(self.modules[name][DOWN].shape[0])

    def alpha(self, name: str) -> float:
        return float(self.modules[name][ALPHA])

    def scale(self, name: str) -> float:
        return self.alpha(name) / self.rank(name)

    def kind(self, name: str) -> str:
        """``conv3x3`` for a down weight with a kernel larger than 1x1, else ``linear`` (Linear or 1x1)."""
        down = self.modules[name][DOWN]
        return "conv3x3" if down.dim() == 4 and tuple(down.shape[2:]) != (1, 1) else "linear"


def module_tensors(down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> dict[str, torch.Tensor]:
    """kohya tensors of one module; alpha None or 0 means alpha = rank."""
    value = resolve_alpha(alpha, down.shape[0])
    return {DOWN: down, UP: up, ALPHA: torch.tensor(value, dtype=torch.float32)}


def diffusers_alpha_problem(alphas: Mapping[str, tuple[str, float]]) -> str | None:
    """Why diffusers' kohya loader would scale some of these modules wrongly, or ``None``.

    ``alphas`` maps a module name to ``(layer kind, alpha)``. diffusers uses the most common
    alpha for every module and lists the others in an ``alpha_pattern`` whose keys it
    derives correctly only for 3x3 convs: a Linear/1x1 module whose alpha is not the most
    common one loads with the wrong scale (reference/interop.md).
    """
    if not alphas:
        return None
    most_common = Counter(alpha for _, alpha in alphas.values()).most_common(1)[0][0]
    wrong = sorted(name for name, (kind, alpha) in alphas.items() if kind != "conv3x3" and alpha != most_common)
    if not wrong:
        return None
    values = sorted({alpha for kind, alpha in alphas.values() if kind != "conv3x3"})
    return (
        f"{len(wrong)} Linear/1x1 modules have an alpha other than the most common one ({most_common:g}; "
        f"Linear/1x1 alphas: {', '.join(f'{v:g}' for v in values)}), e.g. {wrong[0]}: diffusers' "
        "alpha_pattern misnames them and loads them with the wrong scale"
    )


def alpha_problem(lora: LoRASet) -> str | None:
    return diffusers_alpha_problem({name: (lora.kind(name), lora.alpha(name)) for name in lora.modules})


def fold_alphas(lora: LoRASet) -> LoRASet:
    """The same deltas with alpha/rank multiplied into ``lora_up`` and alpha = rank (scale 1)."""
    folded: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensors in lora.modules.items():
        up = tensors[UP]
        scaled = (up.float() * lora.scale(name)).to(up.dtype)
        folded[name] = module_tensors(tensors[DOWN], scaled, float(lora.rank(name)))
    return LoRASet(folded, dict(lora.metadata), lora.source_format)


def summary_dim_alpha(lora: LoRASet) -> tuple[int, float]:
    """The most common rank and alpha, for ``ss_network_dim``/``ss_network_alpha``."""
    dims = Counter(lora.rank(name) for name in lora.modules)
    alphas = Counter(lora.alpha(name) for name in lora.modules)
    return dims.most_common(1)[0][0], alphas.most_common(1)[0][0]


# -- kohya --------------------------------------------------------------------------------
def lora_set_from_kohya(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], source: str) -> LoRASet:
    """A kohya LoRA state dict as a :class:`LoRASet`, module names as the file spells them
    (:func:`renamed` gives them a family's standard spelling)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for name, parts in split_module_keys(tensors).items():
        unknown = sorted(set(parts) - set(LORA_KEYS))
        if unknown:
            raise FormatError(
                f"{source}: {name}.{unknown[0]}: only LoRA modules (lora_down.weight, lora_up.weight, alpha) "
                "can be converted"
            )
        if DOWN not in parts or UP not in parts:
            missing = DOWN if DOWN not in parts else UP
            raise FormatError(f"{source}: module {name} has no {missing}")
        alpha = parts.get(ALPHA)
        modules[name] = module_tensors(parts[DOWN], parts[UP], float(alpha) if alpha is not None else None)
    if not modules:
        raise FormatError(f"{source}: no LoRA modules found")
    return LoRASet(modules, dict(metadata), "kohya")


def renamed(lora: LoRASet, aliases: Mapping[str, str], source: str) -> LoRASet:
    """``lora`` with every module under its standard kohya name (``aliases``: a model's other
    spellings, :meth:`ModelStructure.aliases`; text-encoder names without ``text_model_``)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for raw_name, tensors in lora.modules.items():
        name = normalize_module_name(raw_name, aliases)
        if name in modules:
            raise FormatError(f"{source}: module {name} appears twice (as {raw_name} and under another spelling)")
        modules[name] = tensors
    return LoRASet(modules, dict(lora.metadata), lora.source_format)


def kohya_state_dict(lora: LoRASet) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor for name, tensors in lora.modules.items() for key, tensor in tensors.items()}


def write_kohya(
    lora: LoRASet,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    family: ModelFamily | None = None,
) -> None:
    """Write a kohya file; folds alphas first where diffusers would misread them. ``family``
    names the base model in the metadata a file without kohya metadata gets (default: the
    family of SD 1.x-shaped models)."""
    problem = alpha_problem(lora)
    if problem is not None:
        log.info("%s: folding alpha/rank into lora_up and writing alpha = rank, so every reader "
                 "(diffusers included) applies the same scale (%s)", path, problem)
        lora = fold_alphas(lora)
    metadata = {key: value for key, value in lora.metadata.items() if not key.startswith("sshs_")}
    if lora.source_format != "kohya" or problem is not None:
        dim, alpha = summary_dim_alpha(lora)
        family = family or get_registry().family_for_components(["unet", "text_encoder"])
        defaults = network_metadata(
            network_module="networks.lora", dim=dim, alpha=alpha, network_args=None, family=family,
            v_parameterization=False,
        )
        metadata = {**defaults, **metadata, "ss_network_dim": str(dim), "ss_network_alpha": str(alpha)}
    save_adapter(path, kohya_state_dict(lora), metadata=metadata, dtype=dtype, overwrite=overwrite)

