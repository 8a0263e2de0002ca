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


def test_a_type_without_a_required_hook_fails_at_registration(fake_entry_points):
    with pytest.raises(PluginError) as info:
        fake_entry_points({"bad": "fake_plugins:missing_hook"})
    assert str(info.value) == (
        "plugin 'bad' (fake_plugins:missing_hook) from distribution adapt-test-plugins 9.9: "
        "network type 'nodelta' lacks the required hooks state_dict_keys, delta_weight, extract, "
        "module_options_from_tensors"
    )


def test_a_hook_without_an_answer_names_the_plugin(fake_entry_points):
    registry = fake_entry_points({"silent": "fake_plugins:silent"})
    with pytest.raises(PluginError, match=r"^plugin 'silent' \(fake_plugins:silent\) from distribution "
                       r"adapt-test-plugins 9.9: hook 'extract' gave no answer for type 'silent'$"):
        registry.extract("silent", torch.ones(3, 2), 1, {})


def test_hooks_reach_only_the_owning_plugin_and_the_core_default_merges(fake_entry_points):
    registry = fake_entry_points({"fulldelta": "fake_plugins:fulldelta", "silent": "fake_plugins:silent"})
    calls: list[str] = []
    registry.pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.extend(i.plugin_name for i in impls),
                                        lambda *args: None)
    tensors = {"lora_down.weight": torch.ones(2, 3), "lora_up.weight": torch.ones(4, 2), "alpha": torch.tensor(1.0)}
    weight = torch.zeros(4, 3)
    merged = registry.merge_weights("lora", tensors, weight, 0.5)  # LierLa implements no merge_weights
    assert torch.equal(merged, 0.5 * registry.delta_weight("lora", tensors, weight.shape))
    assert torch.equal(merged, torch.full((4, 3), 0.5))  # 0.5 * (1/2) * (ones @ ones)
    assert set(calls) == {"lora", "adapt.core"}  # neither fulldelta nor silent nor c3lier was asked


def test_a_third_party_type_whose_keys_overlap_loras_is_detected_first(fake_entry_points, tmp_path):
    from adapters_core.models import build_tiny_model

    registry = fake_entry_points({"gainlora": "fake_plugins:gainlora"})
    model = build_tiny_model()
    net = Network.create("gainlora", unet=model.unet, options={"network_dim": 2}, registry=registry)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(std=0.05)
    net.save(tmp_path / "gain.safetensors")  # keys: LoRA's, plus .gain; no metadata
    keys = set(net.state_dict())
    assert any(key.endswith(".lora_down.weight") for key in keys) and any(key.endswith(".gain") for key in keys)
    assert registry.detect(keys, {}) == "gainlora"
    assert registry.detect({key for key in keys if not key.endswith(".gain")}, {}) == "lora"
    fresh = build_tiny_model()
    loaded = Network.from_file(tmp_path / "gain.safetensors", unet=fresh.unet)
    assert loaded.network_type.name == "gainlora" and not loaded.unmatched_keys
    name, module = next(loaded.adapter_modules())
    layer = loaded.targets[name].layer
    before = layer.weight.detach().clone()
    loaded.merge_to()  # the core's default merge, on the type's own delta (gain included)
    product = module.lora_up.weight.flatten(1) @ module.lora_down.weight.flatten(1)
    expected = before + 2.0 * module.scale * product.reshape(before.shape)  # gain 2 times LoRA's delta
    assert torch.allclose(layer.weight, expected, atol=1e-6)


def test_metadata_names_the_type_before_keys_are_read(fake_entry_points, tmp_path):
    from adapters_core.errors import FormatError
    from adapters_core.models import build_tiny_model

    registry = fake_entry_points({"metaonly": "fake_plugins:metaonly"})
    model = build_tiny_model()
    net = Network.create("metaonly", text_encoder=model.text_encoder, registry=registry)
    net.save(tmp_path / "named.safetensors", metadata={"ss_network_module": "tests.metaonly"})
    net.save(tmp_path / "anonymous.safetensors")
    assert registry.detect(net.state_dict(), {"ss_network_module": "tests.metaonly"}) == "metaonly"
    fresh = build_tiny_model()
    assert Network.from_file(tmp_path / "named.safetensors", text_encoder=fresh.text_encoder).network_type.name == "metaonly"
    with pytest.raises(FormatError, match="diff: full weight difference .* is not implemented by any installed"):
        Network.from_file(tmp_path / "anonymous.safetensors", text_encoder=fresh.text_encoder)
    # a kohya LoRA file whose metadata names a type that does not claim it stays LoRA
    assert registry.detect({"lora_te_x.lora_down.weight"}, {"ss_network_module": "networks.dylora"}) == "lora"
