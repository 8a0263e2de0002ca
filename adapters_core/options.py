"""Parse ``--network_args key=value`` strings into typed options for a network type."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from adapters_core.errors import NetworkOptionError
from adapters_core.types import NetworkOption, NetworkType

# Options every LoRA-family type understands: handled by the core (blocks.RankPlan).
COMMON_OPTIONS: tuple[NetworkOption, ...] = (
    NetworkOption("network_dim", int, 4, "rank of Linear and 1x1 conv modules (--network_dim)"),
    NetworkOption("network_alpha", float, 1.0, "alpha; scale = alpha/rank (--network_alpha; 0 means alpha = rank)"),
    NetworkOption("block_dims", str, None, "25 comma-separated ranks, one per U-Net block"),
    NetworkOption("block_alphas", str, None, "25 comma-separated alphas, one per U-Net block"),
    NetworkOption("conv_block_dims", str, None, "25 comma-separated 3x3-conv ranks"),
    NetworkOption("conv_block_alphas", str, None, "25 comma-separated 3x3-conv alphas"),
    NetworkOption("down_lr_weight", str, None, "12 values or a preset (sine, cosine, linear, reverse_linear, zeros, +offset)"),
    NetworkOption("mid_lr_weight", str, None, "1 value: lr weight of the mid block"),
    NetworkOption("up_lr_weight", str, None, "12 values or a preset, deep to shallow"),
    NetworkOption("block_lr_zero_threshold", float, 0.0, "blocks whose lr weight is at or below this get no module"),
)


def parse_network_args(items: Iterable[str]) -> dict[str, str]:
    """``["conv_dim=4", "down_lr_weight=sine+.5"]`` -> ``{"conv_dim": "4", ...}``."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NetworkOptionError(f"--network_args: '{item}' is not of the form key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def _cast(option: NetworkOption, value: Any) -> Any:
    if value is None:
        return None
    if option.type is str:
        return str(value)
    if isinstance(value, option.type) and not isinstance(value, bool):
        return value
    try:
        if option.type is bool:
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text in ("true", "1", "yes")
        if option.type is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        return option.type(value)
    except (TypeError, ValueError):
        raise NetworkOptionError(
            f"--network_args {option.name}={value}: expected a value of type {option.type.__name__}"
        ) from None


def all_options(network_type: NetworkType) -> dict[str, NetworkOption]:
    return {option.name: option for option in (*COMMON_OPTIONS, *network_type.options)}


def resolve_options(network_type: NetworkType, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed options with defaults, checked against the type's declared options."""
    known = all_options(network_type)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise NetworkOptionError(
                f"--network_args: '{key}' is not an option of network type '{network_type.name}'{hint}; "
                f"valid: {', '.join(sorted(known))}"
            )
    options = {name: _cast(option, raw.get(name, option.default)) for name, option in known.items()}
    if network_type.prepare_options is not None:
        options = network_type.prepare_options(dict(options))
    return options
