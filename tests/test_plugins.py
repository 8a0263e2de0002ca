"""The plugin host: entry-point loading, validation errors, the third-party path."""

from __future__ import annotations

import pytest
import torch

from adapt_cli.main import main
from adapters_core.errors import PluginError, UnknownNetworkError
from adapters_core.network import Network
from adapters_core.plugins import get_registry
from adapters_core.testing import run_contract


def test_builtin_types_come_from_entry_points():
    registry = get_registry()
    assert {"lora", "c3lier", "dylora"} <= set(registry.types)
    for name in ("lora", "c3lier", "dylora"):
        assert registry.types[name].distribution == "adapt"
        assert registry.types[name].version == "0.1.0"
    assert registry.get("networks.dylora").name == "dylora"
    assert registry.get("networks.lora").name == "lora"  # not c3lier, which writes the same module
    assert registry.get("lierla").name == "lora"


def test_unknown_type_names_the_installed_ones():
    with pytest.raises(UnknownNetworkError, match="unknown network type 'loraa'; installed types: c3lier, dylora, loha, lora"):
        get_registry().get("loraa")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("fake_plugins:duplicate", r"network type 'lora' is registered twice: by plugin 'bad' \(fake_plugins:duplicate\) from distribution adapt-test-plugins 9.9 and by plugin 'lora' \(adapt_lora.plugin:plugin\) from distribution adapt 0.1.0"),
        ("fake_plugins:wrong_signature", r"plugin 'bad' \(fake_plugins:wrong_signature\) from distribution adapt-test-plugins 9.9: .*create_module.*"),
        ("fake_plugins:misspelled", r"plugin 'bad' \(fake_plugins:misspelled\) from distribution adapt-test-plugins 9.9: unknown hook 'create_modul'"),
        ("fake_plugins:nothing_here", r"plugin 'bad' \(fake_plugins:nothing_here\) from distribution adapt-test-plugins 9.9: cannot be imported"),
    ],
)
def test_bad_plugins_fail_at_start_up_with_one_line(fake_entry_points, entry, message):
    with pytest.raises(PluginError, match=message) as info:
        fake_entry_points({"bad": entry})
    assert "\n" not in str(info.value)


def test_bad_plugin_is_one_line_from_the_cli(fake_entry_points, capsys):
    with pytest.raises(PluginError):
        fake_entry_points({"bad": "fake_plugins:misspelled"})
    assert main(["networks"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapt: error: plugin 'bad'") and "\n" not in err


def test_third_party_type_passes_the_contract_suite(fake_entry_points):
    registry = fake_entry_points({"fulldelta": "fake_plugins:fulldelta"})
    assert registry.types["fulldelta"].distribution == "adapt-test-plugins"
    results = run_contract("fulldelta", registry)
    assert set(results.values()) == {"passed"}


def test_third_party_type_works_with_the_shared_api(fake_entry_points, tmp_path):
    registry = fake_entry_points({"fulldelta": "fake_plugins:fulldelta"})
    from adapters_core.models import build_tiny_model

    model = build_tiny_model()
    net = Network.create("fulldelta", unet=model.unet, text_encoder=model.text_encoder, registry=registry)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.01)
    net.save(tmp_path / "full.safetensors")
    fresh = build_tiny_model()
    loaded = Network.from_file(tmp_path / "full.safetensors", unet=fresh.unet, text_encoder=fresh.text_encoder)
    assert loaded.network_type.name == "fulldelta" and not loaded.unmatched_keys
    tokens = torch.randint(0, 100, (1, 8))
    loaded.apply()
    patched = fresh.text_encoder(tokens).last_hidden_state
    loaded.merge_to()
    merged = fresh.text_encoder(tokens).last_hidden_state
    assert torch.allclose(patched, merged, atol=1e-5)


def test_networks_command_lists_types_with_distribution_and_options(capsys, fake_entry_points):
    fake_entry_points({"fulldelta": "fake_plugins:fulldelta"})
    assert main(["networks"]) == 0
    out = capsys.readouterr().out
    assert "lora (aliases: lierla)  [adapt 0.1.0]" in out
    assert "dylora  [adapt 0.1.0]" in out and "unit=int (default 1)" in out
    assert "fulldelta  [adapt-test-plugins 9.9]" in out
    assert "block_dims" in out
