"""Every hook is documented (docstring and the plugin guide) and exercised (as datasette checks its hooks)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from adapters_core import hookspecs
from adapters_core.models import build_tiny_model
from adapters_core.network import Network
from adapters_core.plugins import get_registry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
HOOKS = sorted(
    name for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")
)


def test_the_hooks_are_the_expected_ones():
    assert HOOKS == sorted(["register_networks", "register_model_families", "create_module", "state_dict_keys",
                            "delta_weight", "merge_weights", "extract", "module_options_from_tensors", "detect_network"])
    assert set(hookspecs.REQUIRED_HOOKS) < set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring_and_a_guide_entry(hook):
    assert len(inspect.getdoc(getattr(hookspecs, hook)) or "") > 40
    assert f"| `{hook}(" in GUIDE.read_text(encoding="utf-8"), f"docs/guide.md's hook table lacks {hook}"


def test_a_small_run_calls_every_hook_through_the_typed_layer(tmp_path):
    registry = get_registry()
    called: set[str] = set()
    undo = registry.pm.add_hookcall_monitoring(lambda name, impls, kwargs: called.add(name), lambda *args: None)
    try:
        model = build_tiny_model()
        net = Network.create("lora", text_encoder=model.text_encoder, options={"network_dim": 2})
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.normal_(std=0.05)
        net.save(tmp_path / "a.safetensors")
        loaded = Network.from_file(tmp_path / "a.safetensors", text_encoder=build_tiny_model().text_encoder)
        loaded.merge_to()
        name, _ = next(net.adapter_modules())
        delta = registry.delta_weight("lora", net.module_tensors(name), net.targets[name].layer.weight.shape)
        registry.extract("lora", delta, 2, {})
    finally:
        undo()
    # the register_* hooks are called while the registry loads (before monitoring can start)
    assert "lora" in registry.types and registry.origin("lora").entry_point == "lora"
    assert "sd1" in registry.families and registry.family_origins["sd1"].entry_point == "sd"
    assert called == set(HOOKS) - {"register_networks", "register_model_families"}


def test_only_the_registry_calls_hooks():
    root = Path(__file__).resolve().parents[1]
    callers = [
        str(path.relative_to(root))
        for folder in ("adapters_core", "adapt_cli", "plugins", "examples")
        for path in (root / folder).rglob("*.py")
        if ".hook." in path.read_text(encoding="utf-8") and path != root / "adapters_core" / "plugins.py"
    ]
    assert callers == []
