"""``adapt extract``: an adapter from the difference of two checkpoints (kohya-format.md §8).

For every candidate layer (the kohya target set; 3x3 convs too when ``conv_dim`` is given)
the difference ``W_tuned - W_org`` goes to the type's ``extract`` hook at
``k = min(dim or conv_dim, in, out)``, which returns the module whose delta is the best
rank-k fit (LoRA: alpha = k). The text encoder is left out when no weight of it moved by
more than ``min_diff``.

Outliers: kohya clamps ``U*S`` and ``Vh`` to the 0.99 quantile of their concatenated values.
The two differ in scale by the singular values, so on many layers that clips most of the
larger factor (measured: an exact rank-3 change of a 320-channel 3x3 conv comes out with a
29% relative error instead of 0; see docs/benchmarks.md for SD 1.5). The default here
balances the factors (``U*sqrt(S)``, ``sqrt(S)*Vh``) and clips only each factor's outliers
(beyond Tukey's far-out fence of its absolute values), and only as far as that moves the
layer's fit by at most ``CLIP_BUDGET`` (1%) of the change's Frobenius norm
(:func:`adapters_core.linalg.clip_outliers`): every layer's relative error stays within one
percentage point of the optimal rank-k fit, for small and large changes alike. An explicit
``clamp_quantile`` below 1 is kohya's clamp, exactly; 1 turns clipping off.

``svd="randomized"`` (the default) sketches the range of each difference (Halko et al.):
on the benchmark models its error is within 1% of the exact truncation at a fraction of
the time (see docs/benchmarks.md).

The fit achieved (:mod:`adapters_core.ops.fit`) is measured on each written module's delta
against the layer's difference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapters_core.atomic import check_writable
from adapters_core.choices import DEFAULT_SVD
from adapters_core.errors import ConfigError, NonFiniteError, ShapeMismatchError
from adapters_core.family import ModelFamily
from adapters_core.finite import all_finite
from adapters_core.formats import precision_dtype
from adapters_core.linalg import SVD_METHODS
from adapters_core.ops.deltas import extract_module, log, module_delta, progress
from adapters_core.ops.fit import FitSummary, LayerFit, layer_fit
from adapters_core.ops.outputs import ModuleOut, adapter_metadata, write_adapter
from adapters_core.plugins import get_registry
from adapters_core.targets import Target, layer_weight, model_targets

Components = Mapping[str, "nn.Module | None"]
CLIP_BUDGET = 0.01  # the default clip may move a layer's fit by this share of the change's norm


@dataclass(frozen=True)
class Extraction:
    """The extracted modules, their fit and what was decided about the text encoder."""

    modules: dict[str, ModuleOut]
    text_encoder_max_diff: float
    text_encoder_included: bool
    fit: FitSummary


def _pairs(family: ModelFamily, org: Components, tuned: Components, conv: bool) -> list[tuple[Target, Target]]:
    tuned_targets = {t.name: t for t in model_targets(family, tuned, include_conv_blocks=conv)}
    pairs = []
    for target in model_targets(family, org, include_conv_blocks=conv):
        other = tuned_targets.get(target.name)
        org_shape = layer_weight(target.layer).shape
        if other is None or layer_weight(other.layer).shape != org_shape:
            found = tuple(layer_weight(other.layer).shape) if other is not None else "no such layer"
            raise ShapeMismatchError(
                f"{target.name}: weight shape {tuple(org_shape)} in --model_org but {found} in --model_tuned; "
                "the models must share an architecture"
            )
        pairs.append((target, other))
    return pairs


def _difference(org: Target, tuned: Target, device: torch.device) -> torch.Tensor:
    after, before = layer_weight(tuned.layer).detach(), layer_weight(org.layer).detach()
    return after.to(device, torch.float32) - before.to(device, torch.float32)


def extract_modules(
    family: ModelFamily,
    org: Components,
    tuned: Components,
    *,
    dim: int,
    conv_dim: int | None = None,
    network: str = "lora",
    svd: str = DEFAULT_SVD,
    clamp_quantile: float | None = None,
    min_diff: float = 0.01,
    device: str | torch.device = "cpu",
) -> Extraction:
    """Extract modules from the components (by name) of the original and tuned models of ``family``.

    ``clamp_quantile=None`` clips outliers within :data:`CLIP_BUDGET`; a value below 1 is
    kohya's clamp; 1 clips nothing.
    """
    if dim < 1 or (conv_dim is not None and conv_dim < 0):
        raise ConfigError(f"--dim {dim} / --conv_dim {conv_dim}: ranks must be positive")
    if clamp_quantile is not None and not 0.0 < clamp_quantile <= 1.0:
        raise ConfigError(f"--clamp_quantile {clamp_quantile}: expected a value in (0, 1] (1 = no clamp)")
    if svd not in SVD_METHODS:
        raise ConfigError(f"--svd {svd}: expected one of {', '.join(SVD_METHODS)}")
    network = get_registry().get(network).name
    device = torch.device(device)
    pairs = _pairs(family, org, tuned, bool(conv_dim))
    te_pairs = [p for p in pairs if p[0].is_text_encoder]
    max_diff = max((float(_difference(o, t, device).abs().max()) for o, t in te_pairs), default=0.0)
    include_te = max_diff > min_diff
    if te_pairs and not include_te:
        log.warning(
            "text encoder unchanged (max |diff| %.3g <= --min_diff %g): extracting the U-Net only", max_diff, min_diff
        )
    selected = [p for p in pairs if include_te or not p[0].is_text_encoder]
    options: dict[str, object] = {"svd": svd}
    if clamp_quantile is None:
        options["clip_budget"] = CLIP_BUDGET
    else:
        options["clamp_quantile"] = clamp_quantile
    modules: dict[str, ModuleOut] = {}
    fits: list[LayerFit] = []
    for org_target, tuned_target in progress(selected, "extracting"):
        shape = layer_weight(org_target.layer).shape
        rank = conv_dim if org_target.layer_kind == "conv3x3" and conv_dim else dim
        k = max(1, min(rank, shape[0], shape[1]))
        difference = _difference(org_target, tuned_target, device)
        if not all_finite(difference):
            raise NonFiniteError(
                f"{org_target.name}: the weights differ by NaN or infinite values; --model_org and --model_tuned "
                "must hold finite weights"
            )
        tensors = extract_module(network, difference, k, options)
        fits.append(layer_fit(org_target.name, difference, module_delta(network, tensors, shape, org_target.name)))
        modules[org_target.name] = ModuleOut({key: t.cpu() for key, t in tensors.items()}, shape)
    return Extraction(modules, max_diff, include_te, FitSummary(tuple(fits)))


def extract_from_models(
    model_org: str | os.PathLike[str],
    model_tuned: str | os.PathLike[str],
    *,
    save_to: str | os.PathLike[str],
    dim: int = 4,
    conv_dim: int | None = None,
    network: str = "lora",
    family: str | None = None,
    v_parameterization: bool | None = None,
    svd: str = DEFAULT_SVD,
    clamp_quantile: float | None = None,
    min_diff: float = 0.01,
    device: str | torch.device = "cpu",
    load_precision: str | None = None,
    save_precision: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Extraction]:
    """Load both checkpoints (Diffusers folders or single files of one family, detected; ``family``
    if given must match), extract and write the adapter."""
    from adapters_core.models import load_sd_model  # imports diffusers

    check_writable(save_to, overwrite)
    network = get_registry().get(network).name
    load_dtype = precision_dtype(load_precision, "--load_precision") or torch.float32
    save_dtype = precision_dtype(save_precision)
    org = load_sd_model(
        model_org, family=family, v_parameterization=v_parameterization, dtype=load_dtype, need_tokenizer=False
    )
    tuned = load_sd_model(
        model_tuned, family=org.family, v_parameterization=org.v_parameterization, dtype=load_dtype,
        need_tokenizer=False,
    )
    extraction = extract_modules(
        org.family,
        org.components,
        tuned.components,
        dim=dim,
        conv_dim=conv_dim,
        network=network,
        svd=svd,
        clamp_quantile=clamp_quantile,
        min_diff=min_diff,
        device=device,
    )
    metadata = adapter_metadata(
        extraction.modules,
        network,
        family=org.family,
        v_parameterization=org.v_parameterization,
        title=Path(save_to).stem,
        comment=f"extracted from {Path(model_tuned).name} - {Path(model_org).name}",
    )
    metadata.setdefault("ss_network_args", "{}")  # kohya's extract writes it even when empty
    path = write_adapter(save_to, extraction.modules, metadata, dtype=save_dtype, overwrite=overwrite)
    return path, extraction
