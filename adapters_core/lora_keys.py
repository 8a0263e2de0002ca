"""kohya's LoRA tensor names and its alpha rule, importable without torch.

A kohya LoRA module ``<name>`` is stored as ``<name>.lora_down.weight`` (``[r, in]`` or
``[r, in, kh, kw]``), ``<name>.lora_up.weight`` (``[out, r]`` or ``[out, r, 1, 1]``) and
``<name>.alpha`` (a 0-d tensor); its delta is ``alpha/r * up @ down``. Files from before alpha
existed have no alpha and some tools write 0: both mean alpha = r, for kohya's reader and for
every reader here (:func:`resolve_alpha`). Types with other factors (LoHa) keep the ``alpha``
key and the rule.
"""

from __future__ import annotations

from typing import SupportsFloat

DOWN = "lora_down.weight"
UP = "lora_up.weight"
ALPHA = "alpha"
LORA_KEYS = (DOWN, UP, ALPHA)


def resolve_alpha(alpha: SupportsFloat | None, rank: int) -> float:
    """The effective alpha of a module of rank ``rank``: None or 0 means alpha = rank."""
    value = float(alpha) if alpha is not None else 0.0
    return value if value != 0.0 else float(rank)
