"""The contract every adapter type must honour, ours and third-party ones alike.

Each check builds a network of one type on a single layer (Linear, 1x1 conv, 3x3 conv,
strided 3x3 conv) in a given dtype and verifies one promise of the hooks:

- ``identity_at_init``: a fresh module leaves the layer's output unchanged;
- ``forward_matches_delta``: with random weights the output is ``base + delta_weight . x``;
- ``save_load_round_trip``: a saved file loads back into a fresh network exactly, and
  ``state_dict_keys`` names exactly the module's tensors;
- ``merge_matches_forward``: ``merge_weights`` gives the weight the patched forward implies;
- ``extract_reproduces_delta``: ``extract`` of the type's own full-rank delta reproduces it.

Use :func:`run_contract` from a plugin's own tests, or :func:`contract_cases` to
parametrise pytest over every registered type.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapters_core.formats import load_adapter
from adapters_core.matching import module_spec
from adapters_core.network import Network
from adapters_core.options import all_options
from adapters_core.plugins import Registry, get_registry
from adapters_core.targets import Target, layer_kind, layer_weight

# Options a type does not declare are left out; without ``conv_dim`` 3x3 layers are skipped.
CONTRACT_OPTIONS = {"network_dim": 4, "network_alpha": 2.0, "conv_dim": 4, "conv_alpha": 2.0}
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


class ContractSkip(Exception):
    """The type does not adapt this kind of layer; the check does not apply."""


@dataclass(frozen=True)
class LayerCase:
    kind: str
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


LAYER_CASES: tuple[LayerCase, ...] = (
    LayerCase("linear", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
              lambda: nn.Linear(16, 24), (2, 5, 16)),
    LayerCase("conv1x1", "lora_unet_down_blocks_0_attentions_0_proj_in", lambda: nn.Conv2d(16, 24, 1), (2, 16, 6, 6)),
    LayerCase("conv3x3", "lora_unet_down_blocks_0_resnets_0_conv1",
              lambda: nn.Conv2d(16, 24, 3, padding=1), (2, 16, 6, 6)),
    LayerCase("conv3x3_stride2", "lora_unet_down_blocks_0_downsamplers_0_conv",
              lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1), (2, 16, 6, 6)),
)


def _layer(case: LayerCase, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return case.build().to(dtype)


def _target(case: LayerCase, layer: nn.Module) -> Target:
    return Target(case.name, layer, "unet", 1, layer_kind(layer) or "", case.kind.startswith("conv3x3"))


def _network(network: str, case: LayerCase, layer: nn.Module, registry: Registry, dtype: torch.dtype) -> Network:
    target = _target(case, layer)
    known = all_options(registry.get(network))
    options = {key: value for key, value in CONTRACT_OPTIONS.items() if key in known}
    created = Network.create_for_targets(network, [target], options=options, registry=registry)
    if not list(created.adapter_modules()):
        raise ContractSkip(f"type '{network}' does not adapt {case.kind} layers")
    return created.to(dtype)


def _randomise(network: Network, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _functional(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer's operation with another weight, in float32."""
    bias = layer.bias.float() if isinstance(layer.bias, torch.Tensor) else None
    weight, x = weight.float(), x.float()
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding)
    return F.linear(x, weight, bias)


def _input(case: LayerCase, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(case.input_shape, generator=torch.Generator().manual_seed(2)).to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = expected.float().abs().max().clamp_min(1.0)
    error = (actual.float() - expected.float()).abs().max() / scale
    if error > TOLERANCE[dtype]:
        raise AssertionError(f"{what}: relative error {error:.3e} exceeds {TOLERANCE[dtype]:.0e}")


def _delta(network: Network, name: str, layer: nn.Module) -> torch.Tensor:
    shape = layer_weight(layer).shape
    return network.registry.delta_weight(network.network_type.name, network.module_tensors(name), shape)


def identity_at_init(network: str, case: LayerCase, dtype: torch.dtype, registry: Registry) -> None:
    layer = _layer(case, dtype)
    x = _input(case, dtype)
    expected = layer(x)
    _network(network, case, layer, registry, dtype).apply()
    if not torch.equal(layer(x), expected):
        raise AssertionError(f"{network}/{case.kind}/{dtype}: a fresh module changes the layer's output")


def _applied_random_network(
    network: str, case: LayerCase, dtype: torch.dtype, registry: Registry, multiplier: float
) -> tuple[nn.Module, torch.Tensor, Network]:
    """A layer, an input and a network with random weights applied to it at ``multiplier``."""
    layer = _layer(case, dtype)
    net = _network(network, case, layer, registry, dtype)
    _randomise(net)
    net.apply()
    net.set_multiplier(multiplier)
    return layer, _input(case, dtype), net


def forward_matches_delta(network: str, case: LayerCase, dtype: torch.dtype, registry: Registry) -> None:
    layer, x, net = _applied_random_network(network, case, dtype, registry, 0.7)
    (name, _), = net.adapter_modules()
    weight = layer_weight(layer).float() + 0.7 * _delta(net, name, layer)
    expected = _functional(layer, weight, x)
    _assert_close(layer(x), expected, dtype, f"{network}/{case.kind}/{dtype}: patched forward vs base + delta")


def _check_declared_keys(network: str, case: LayerCase, loaded: Network, registry: Registry) -> None:
    """``state_dict_keys`` of a loaded module's spec names exactly the module's tensors."""
    (name, _), = loaded.adapter_modules()
    tensors = loaded.module_tensors(name)
    read = registry.module_options_from_tensors(network, name, tensors)
    if read is None:
        raise AssertionError(f"{network}/{case.kind}: module_options_from_tensors does not read its own module")
    declared = registry.state_dict_keys(network, module_spec(name, loaded.targets[name], read, loaded.options))
    if set(declared) != set(tensors):
        raise AssertionError(f"{network}/{case.kind}: state_dict_keys {sorted(declared)} vs the module's {sorted(tensors)}")


def save_load_round_trip(network: str, case: LayerCase, dtype: torch.dtype, registry: Registry) -> None:
    layer = _layer(case, dtype)
    net = _network(network, case, layer, registry, dtype)
    _randomise(net)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "adapter.safetensors"
        net.save(path)
        tensors = load_adapter(path).tensors
    fresh = _target(case, _layer(case, dtype, seed=5))
    loaded = Network.from_weights(tensors, targets=[fresh], network=network, registry=registry)
    _check_declared_keys(network, case, loaded, registry)
    original, restored = net.state_dict(), loaded.state_dict()
    if original.keys() != restored.keys():
        raise AssertionError(f"{network}/{case.kind}: keys differ after save/load: {sorted(original.keys() ^ restored.keys())}")
    for key in original:
        if not torch.equal(original[key].to(restored[key].dtype), restored[key]):
            raise AssertionError(f"{network}/{case.kind}/{dtype}: {key} changed in the save/load round trip")


def merge_matches_forward(network: str, case: LayerCase, dtype: torch.dtype, registry: Registry) -> None:
    layer, x, net = _applied_random_network(network, case, dtype, registry, 0.5)
    patched = layer(x)
    net.merge_to()
    if net.applied:
        raise AssertionError(f"{network}: merge_to left the patch in place (delta counted twice)")
    _assert_close(layer(x), patched, dtype, f"{network}/{case.kind}/{dtype}: merged weights vs patched forward")


def extract_reproduces_delta(network: str, case: LayerCase, dtype: torch.dtype, registry: Registry) -> None:
    layer = _layer(case, torch.float32)
    net = _network(network, case, layer, registry, torch.float32)
    _randomise(net)
    (name, _), = net.adapter_modules()
    delta = _delta(net, name, layer)
    full_rank = min(delta.shape[0], delta[0].numel())
    tensors = registry.extract(network, delta, full_rank, {})
    tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    rebuilt = registry.delta_weight(network, tensors, delta.shape)
    _assert_close(rebuilt, delta, dtype, f"{network}/{case.kind}/{dtype}: delta_weight(extract(delta)) vs delta")


CHECKS: dict[str, Callable[[str, LayerCase, torch.dtype, Registry], None]] = {
    "identity_at_init": identity_at_init,
    "forward_matches_delta": forward_matches_delta,
    "save_load_round_trip": save_load_round_trip,
    "merge_matches_forward": merge_matches_forward,
    "extract_reproduces_delta": extract_reproduces_delta,
}


def contract_cases(registry: Registry | None = None) -> Iterator[tuple[str, str, LayerCase, torch.dtype]]:
    """``(type, check, layer case, dtype)`` for every registered type: for pytest parametrisation."""
    registry = registry or get_registry()
    for network in sorted(registry.types):
        for check in CHECKS:
            for case in LAYER_CASES:
                for dtype in DTYPES:
                    yield network, check, case, dtype


def run_contract(network: str, registry: Registry | None = None) -> dict[str, str]:
    """Run every check for one type; returns ``{"check/layer/dtype": "passed" | "skipped: why"}``.

    Raises :class:`AssertionError` on the first broken promise.
    """
    registry = registry or get_registry()
    results: dict[str, str] = {}
    for _, check, case, dtype in (c for c in contract_cases(registry) if c[0] == network):
        key = f"{check}/{case.kind}/{str(dtype).removeprefix('torch.')}"
        try:
            CHECKS[check](network, case, dtype, registry)
            results[key] = "passed"
        except ContractSkip as skip:
            results[key] = f"skipped: {skip}"
    return results
