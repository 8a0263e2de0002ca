"""The metadata every adapter file carries: kohya's minimal ``ss_*`` keys and ``modelspec.*``.

All values are strings, as kohya writes them (``str(None)`` is ``"None"``, booleans
``"True"``/``"False"``, dicts JSON).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adapters_core import __version__

if TYPE_CHECKING:
    from adapters_core.family import ModelFamily

MODELSPEC_VERSION = "1.0.1"
IMPLEMENTATION = "diffusers"


def family_from_metadata(metadata: Mapping[str, str]) -> tuple[ModelFamily, bool]:
    """The installed model family an adapter file was made for, and whether its base predicts
    v: the first family that claims the metadata (``ss_base_model_version``), else the first
    one with a U-Net and one text encoder (kohya files without metadata are SD 1.x)."""
    from adapters_core.plugins import get_registry

    registry = get_registry()
    version = metadata.get("ss_base_model_version", "")
    v_prediction = version.endswith("_v") or metadata.get("modelspec.prediction_type") == "v"
    for family in registry.families.values():
        if family.claims_metadata(metadata):
            return family, v_prediction
    if metadata.get("ss_v2") == "True":
        v2_families = [family for family in registry.families.values() if family.kohya_v2]
        if v2_families:
            return v2_families[0], v_prediction
    return registry.family_for_components(["unet", "text_encoder"]), v_prediction


def _architecture(family: ModelFamily, v_prediction: bool, kind: str) -> str:
    base = family.architecture(v_prediction)
    return f"{base}/{kind}" if kind else base


def _square(side: int) -> str:
    return f"{side}x{side}"


def modelspec_metadata(
    *,
    family: ModelFamily,
    v_parameterization: bool,
    title: str | None,
    kind: str = "lora",
    resolution: str | None = None,
    timestamp: float | None = None,
    clip_skip: int | None = None,
    merged_from: Sequence[str] | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """The ``modelspec.*`` keys (Stability AI's model spec) for an adapter or a checkpoint."""
    when = _dt.datetime.fromtimestamp(timestamp) if timestamp is not None else _dt.datetime.now()
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": _architecture(family, v_parameterization, kind),
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.implementation_version": f"adapt/{__version__}",
        "modelspec.title": title or f"{kind.upper() or 'Checkpoint'}@{when.strftime('%Y-%m-%d %H:%M:%S')}",
        "modelspec.resolution": resolution or _square(family.default_resolution(v_parameterization)),
        "modelspec.date": when.replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
    }
    if clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(clip_skip)
    if merged_from:
        meta["modelspec.merged_from"] = ", ".join(merged_from)
    if description:
        meta["modelspec.description"] = description
    return meta


def network_metadata(
    *,
    network_module: str,
    dim: Any,
    alpha: Any,
    network_args: Mapping[str, Any] | None,
    family: ModelFamily,
    v_parameterization: bool,
) -> dict[str, str]:
    """kohya's minimum network keys: ``ss_v2``, ``ss_base_model_version``, ``ss_network_*``."""
    meta = {
        "ss_v2": str(bool(family.kohya_v2)),
        "ss_base_model_version": family.base_model_version(v_parameterization),
        "ss_network_module": network_module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
    }
    if network_args:
        meta["ss_network_args"] = json.dumps({key: str(value) for key, value in network_args.items()})
    return meta
