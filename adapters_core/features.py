"""Adapter features that files from other tools carry and that no built-in type implements.

LyCORIS, diffusers and PEFT write modules whose math goes beyond a plain low-rank delta
(DoRA's weight decomposition, Tucker cores, Kronecker factors, IA3 scales, full weight
differences). Applying such a file without that math would give another result than the
tools that wrote it, so a module whose keys carry one of these features, and whose type
does not read them, stops every command with one line naming the feature and the module
(until a plugin that reads it is installed).
"""

from __future__ import annotations

from collections.abc import Iterable

from adapters_core.errors import FormatError

# Module-relative key (or its first dotted part) -> the feature it belongs to.
FEATURE_KEYS: dict[str, str] = {
    "dora_scale": "DoRA weight decomposition",
    "lora_magnitude_vector": "DoRA weight decomposition",
    "lora_mid.weight": "Tucker decomposition (LoCon lora_mid)",
    "hada_t1": "Tucker decomposition (LoHa hada_t1)",
    "hada_t2": "Tucker decomposition (LoHa hada_t2)",
    "lokr_w1": "LoKr (Kronecker product)",
    "lokr_w1_a": "LoKr (Kronecker product)",
    "lokr_w1_b": "LoKr (Kronecker product)",
    "lokr_w2": "LoKr (Kronecker product)",
    "lokr_w2_a": "LoKr (Kronecker product)",
    "lokr_w2_b": "LoKr (Kronecker product)",
    "lokr_t2": "LoKr (Kronecker product)",
    "on_input": "IA3",
    "diff": "full weight difference (LyCORIS full)",
    "diff_b": "full weight difference (LyCORIS full)",
    "w_norm": "full weight difference (norm layer)",
    "b_norm": "full weight difference (norm layer)",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "oft_R": "BOFT",
    "a1.weight": "GLoRA",
    "b1.weight": "GLoRA",
}


class UnsupportedFeatureError(FormatError):
    """A module whose keys carry a feature no installed network type implements."""


def feature_of(key: str) -> str | None:
    """The feature a module-relative key (or a key's tail) belongs to, or ``None``."""
    parts = key.split(".")
    for index, part in enumerate(parts):
        feature = FEATURE_KEYS.get(".".join(parts[index:])) or FEATURE_KEYS.get(part)
        if feature is not None:
            return feature
    return None


def refuse_features(source: object, module: str, keys: Iterable[str]) -> None:
    """Raise :class:`UnsupportedFeatureError` if one of ``keys`` (a module's unread keys)
    belongs to a known feature; other unknown keys are left to the caller to report."""
    for key in sorted(keys):
        feature = feature_of(key)
        if feature is not None:
            raise UnsupportedFeatureError(
                f"{source}: {module}.{key}: {feature} is not implemented by any installed network type; "
                "nothing was applied (a plugin that reads it must be installed)"
            )
