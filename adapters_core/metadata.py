"""The metadata every adapter file carries: kohya's minimal ``ss_*`` keys and ``modelspec.*``.

All values are strings, as kohya writes them (``str(None)`` is ``"None"``, booleans
``"True"``/``"False"``, dicts JSON).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from adapters_core import __version__

MODELSPEC_VERSION = "1.0.1"
IMPLEMENTATION = "diffusers"


def base_model_version(v2: bool, v_parameterization: bool) -> str:
    """kohya's ``ss_base_model_version``: ``sd_v1``, ``sd_v2`` or ``sd_v2_v``."""
    if not v2:
        return "sd_v1"
    return "sd_v2_v" if v_parameterization else "sd_v2"


def architecture(v2: bool, v_parameterization: bool, kind: str = "lora") -> str:
    if not v2:
        base = "stable-diffusion-v1"
    else:
        base = "stable-diffusion-v2-768-v" if v_parameterization else "stable-diffusion-v2-512"
    return f"{base}/{kind}" if kind else base


def default_resolution(v2: bool, v_parameterization: bool) -> str:
    return "768x768" if v2 and v_parameterization else "512x512"


def flags_from_metadata(metadata: Mapping[str, str]) -> tuple[bool, bool]:
    """``(v2, v_parameterization)`` recorded in a file (SD1 when absent)."""
    version = metadata.get("ss_base_model_version", "")
    v2 = metadata.get("ss_v2") == "True" or version.startswith("sd_v2")
    v_param = version == "sd_v2_v" or metadata.get("modelspec.prediction_type") == "v"
    return v2, v_param


def modelspec_metadata(
    *,
    v2: bool,
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
        "modelspec.architecture": architecture(v2, v_parameterization, kind),
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.implementation_version": f"adapt/{__version__}",
        "modelspec.title": title or f"{kind.upper() or 'Checkpoint'}@{when.strftime('%Y-%m-%d %H:%M:%S')}",
        "modelspec.resolution": resolution or default_resolution(v2, v_parameterization),
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
    v2: bool,
    v_parameterization: bool,
) -> dict[str, str]:
    """kohya's minimum network keys: ``ss_v2``, ``ss_base_model_version``, ``ss_network_*``."""
    meta = {
        "ss_v2": str(bool(v2)),
        "ss_base_model_version": base_model_version(v2, v_parameterization),
        "ss_network_module": network_module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
    }
    if network_args:
        meta["ss_network_args"] = json.dumps({key: str(value) for key, value in network_args.items()})
    return meta
