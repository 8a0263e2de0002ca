"""The hooks an adapter type or a model family implements. This module is their reference
documentation.

A plugin is a module (or an object) registered under the entry-point group ``adapt.networks``
(adapter types) or ``adapt.models`` (base-model families). It implements some of the hooks
below with ``@adapters_core.hookimpl`` and registers its types with
:func:`register_networks`, its families with :func:`register_model_families`. Everything a
family answers is a method of :class:`adapters_core.family.ModelFamily`, documented there;
the rest of this page is about adapter types.

**Who is asked.** The host records which plugin registered which type and calls the
per-type hooks of the *owning plugin only* (plus the core's defaults, see below), through
the typed methods of :class:`adapters_core.plugins.Registry` (``registry.create_module``,
``registry.delta_weight`` ...); nothing else in adapt calls a hook. So a plugin never checks
whose type it is asked about. ``network`` (the type name, ``"lora"``) is still passed, for a
plugin that registers several types; a plugin with one type may leave the argument out of
its signature (pluggy passes only the arguments an implementation names).

**Required hooks.** A plugin that registers a type must implement :data:`REQUIRED_HOOKS`
(``create_module``, ``state_dict_keys``, ``delta_weight``, ``extract``,
``module_options_from_tensors``): loading, saving, ``check`` and every shared tool need
them. A plugin without one fails at start-up with one line naming the plugin and the hook.

**Defaults.** The core registers its own plugin with ``trylast=True``; its answers count
only when the owner gives none. It supplies ``merge_weights`` as ``weight + ratio *
delta_weight`` (:func:`adapters_core.module.merge_additive`), so additive types implement
``delta_weight`` only. When neither the owner nor the default answers a hook that must
answer, the host raises :class:`adapters_core.errors.PluginError` naming the plugin.

**Keys.** Tensor dictionaries and key lists passed to and returned by the per-module hooks
use *module-relative* keys (``"lora_down.weight"``, ``"lora_up.weight"``, ``"alpha"``); the
core adds the kohya module name (``lora_unet_..._to_q.``) when it writes a file and strips it
when it reads one.

**Per-step behaviour** (DyLoRA's rank unit) lives on the module, not in a hook: the training
loop calls :meth:`adapters_core.module.AdapterModule.on_train_step` of every module before
each forward pass.

**Detection** (:meth:`adapters_core.plugins.Registry.detect`): a file whose metadata names
a type (``ss_network_module`` such as ``networks.lora``, else the last part of
``modelspec.architecture``) is that type when the type's own ``detect_network`` claims the
file, or when its plugin implements no ``detect_network`` (it trusts the metadata).
Otherwise every plugin's ``detect_network`` is asked; LoRA's catch-all ("any
``.lora_down.weight`` key") is ``trylast``, so a type whose keys overlap LoRA's is asked
first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from adapters_core.family import ModelFamily
    from adapters_core.types import ModuleSpec, NetworkType

PROJECT = "adapt"
hookspec = pluggy.HookspecMarker(PROJECT)

# The hooks a plugin must implement for each type it registers (checked at registration).
REQUIRED_HOOKS = ("create_module", "state_dict_keys", "delta_weight", "extract", "module_options_from_tensors")


@hookspec
def register_networks(register: Callable[[NetworkType], None]) -> None:
    """Call ``register(NetworkType(...))`` once for each adapter type this plugin provides.

    The host keeps control: it rejects a second type of the same name, naming both
    distributions, rejects a type whose plugin lacks one of :data:`REQUIRED_HOOKS`, and
    records the distribution and version for ``adapt networks``.
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
def create_module(network: str, spec: ModuleSpec) -> nn.Module | None:
    """Return the adapter module for one layer, or ``None`` if this type does not adapt it.

    ``spec`` (:class:`adapters_core.types.ModuleSpec`) carries the kohya name, the layer, this
    module's rank and alpha, its block index, layer kind and the network's options. The
    returned module must subclass :class:`adapters_core.module.AdapterModule`; its
    ``state_dict()`` keys are the module-relative file keys.
    """


@hookspec(firstresult=True)
def state_dict_keys(network: str, spec: ModuleSpec) -> list[str] | None:
    """Return the module-relative keys the module for ``spec`` writes (``"lora_down.weight"``...).

    Used to load and to report which keys of a file would load nowhere (``adapt check``).
    Tools without a model pass a stand-in ``nn.Linear`` on the "meta" device as the layer.
    """


@hookspec(firstresult=True)
def delta_weight(
    network: str, tensors: Mapping[str, torch.Tensor], weight_shape: torch.Size
) -> torch.Tensor | None:
    """Return the weight delta one module adds to its layer, at multiplier 1 (the primitive).

    ``tensors`` are the module's tensors with module-relative keys; the result has
    ``weight_shape`` and includes the type's own scale (alpha/rank for LoRA), in float32.
    The caller owns the result and may write into it (the core copies an answer that shares
    memory with ``tensors``).
    """


@hookspec(firstresult=True)
def merge_weights(
    network: str, tensors: Mapping[str, torch.Tensor], weight: torch.Tensor, ratio: float
) -> torch.Tensor | None:
    """Return the layer's new weight after merging one module's tensors at ``ratio``.

    Optional: the core's default is ``weight + ratio * delta_weight`` computed in float32 and
    returned in the weight's dtype. Implement it only for a type that is not additive.
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
    """Return ``{"dim": rank, "alpha": alpha}`` that a module saved with ``tensors`` was
    created with (so a file loads into freshly created modules), or ``None`` when the
    tensors are not a module of this type (``check`` then reports them). Other entries are
    added to the module's ``ModuleSpec.options``."""


@hookspec(firstresult=True)
def detect_network(keys: frozenset[str], metadata: Mapping[str, str]) -> str | None:
    """Return the name of this plugin's type that wrote a file with these tensor keys and
    metadata, or ``None`` (see *Detection* above; the first answer wins)."""
