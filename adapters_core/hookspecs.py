"""The hooks an adapter type implements. This module is their reference documentation.

A plugin is a module registered under the entry-point group ``adapt.networks``. It
implements some of the hooks below with ``@adapters_core.hookimpl``. Per-type hooks are
``firstresult``: every plugin is asked in turn, a plugin answers for its own network type
and returns ``None`` for any other, and the first non-``None`` answer wins.

``network`` arguments are always the *type name* (``"lora"``, ``"c3lier"`` ...), so a plugin
checks ``if network != "mytype": return None`` first.

Tensor dictionaries passed to and returned by the per-module hooks use *module-relative*
keys (``"lora_down.weight"``, ``"lora_up.weight"``, ``"alpha"``); the core adds the kohya
module name (``lora_unet_..._to_q.``) when it writes a file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapters_core.family import ModelFamily
    from adapters_core.network import Network
    from adapters_core.types import NetworkType

PROJECT = "adapt"
hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def register_networks(register: Callable[[NetworkType], None]) -> None:
    """Call ``register(NetworkType(...))`` once for each adapter type this plugin provides.

    The host keeps control: it rejects a second type of the same name, naming both
    distributions, and records the distribution and version for ``adapt networks``.
    """


@hookspec
def register_model_families(register: Callable[[ModelFamily], None]) -> None:
    """Call ``register(family)`` once for each base-model family this plugin provides.

    ``family`` is an instance of a :class:`adapters_core.family.ModelFamily` subclass; that
    class documents, method by method, what a family answers (detection, loading, components
    and their kohya prefixes, block layout, prompt encoding, pipeline, metadata names). The
    plugin is registered under the entry-point group ``adapt.models``. A second family of the
    same name is refused, naming both distributions; families are asked to detect a model in
    the order they were registered.
    """


@hookspec(firstresult=True)
def create_module(
    network: str, name: str, layer: nn.Module, options: Mapping[str, Any]
) -> nn.Module | None:
    """Return the adapter module for one layer, or ``None`` if this type does not adapt it.

    ``name`` is the kohya module name (``lora_unet_down_blocks_0_attentions_0_proj_in``),
    ``layer`` the wrapped ``nn.Linear``/``nn.Conv2d``. ``options`` holds the network's
    options after the type's ``prepare_options`` ran, plus per-module values resolved by the
    core: ``dim`` and ``alpha`` (block-wise ranks already applied), ``block_index`` (0..24,
    -1 for the text encoder) and ``layer_kind`` (``"linear"``, ``"conv1x1"``,
    ``"conv3x3"``). The returned module must subclass :class:`adapters_core.module.AdapterModule`.
    """


@hookspec(firstresult=True)
def state_dict_keys(
    network: str, name: str, layer: nn.Module, options: Mapping[str, Any]
) -> list[str] | None:
    """Return the full tensor keys the module for ``layer`` writes (``name + ".lora_down.weight"``...).

    Used to save, to load and to report which keys of a file would load nowhere.
    """


@hookspec(firstresult=True)
def delta_weight(
    network: str, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size
) -> torch.Tensor | None:
    """Return the weight delta one module adds to its layer, at multiplier 1 (the primitive).

    ``tensors`` are the module's tensors with module-relative keys; the result has
    ``weight_shape`` and includes the type's own scale (alpha/rank for LoRA), in float32.
    """


@hookspec(firstresult=True)
def merge_weights(
    network: str, tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, ratio: float
) -> torch.Tensor | None:
    """Return the layer's new weight after merging one module's tensors at ``ratio``.

    Types built on an additive delta implement this as ``weight + ratio * delta_weight``
    (the core offers :func:`adapters_core.module.merge_additive`).
    """


@hookspec(firstresult=True)
def extract(
    network: str, delta: torch.Tensor, rank: int, options: Mapping[str, Any]
) -> dict[str, torch.Tensor] | None:
    """Return the module tensors that best represent ``delta`` (the inverse of ``delta_weight``).

    ``delta`` has the layer's weight shape (2-D or 4-D), ``rank`` is the target rank.
    ``options`` may carry ``alpha`` (else the type picks, LoRA uses alpha = rank), ``svd``
    (``exact`` or ``randomized``), ``clamp_quantile`` (kohya's clamp) and ``clip_budget``
    (clip outliers only as far as the fit stays within that fraction of ``delta``'s norm; see
    ``adapters_core.linalg.low_rank_factors``). ``delta_weight`` of the result must
    approximate ``delta`` as well as a rank-``rank`` approximation can.
    """


@hookspec(firstresult=True)
def module_options_from_tensors(
    network: str, name: str, tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any] | None:
    """Return the per-module options (at least ``dim`` and ``alpha``) that a module saved
    with ``tensors`` was created with, so a file can be loaded into freshly created modules."""


@hookspec(firstresult=True)
def detect_network(keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
    """Return the type name that wrote a file with these tensor keys and metadata, or ``None``."""


@hookspec
def on_train_step(network: Network, step: int) -> None:
    """Called before each training forward pass; DyLoRA picks its rank unit here."""
