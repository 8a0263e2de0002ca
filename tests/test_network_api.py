"""The Python API on the tiny SD model: apply, remove, stack, set_multiplier, merge_to."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize, te_out, unet_inputs, unet_out

from adapters_core.errors import NetworkOptionError, NonFiniteError
from adapters_core.models import build_tiny_model
from adapters_core.network import Network

TOKENS = torch.tensor([[0, 5, 9, 17, 33, 1]])


@pytest.fixture
def model():
    return build_tiny_model(seed=0)


def test_apply_remove_and_multiplier(model):
    inputs = unet_inputs(model)
    base = unet_out(model, inputs)
    net = randomize(Network.create("c3lier", unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 4}))
    net.apply()
    full = unet_out(model, inputs)
    assert not torch.allclose(full, base, atol=1e-4)
    net.set_multiplier(0.0)
    assert torch.allclose(unet_out(model, inputs), base, atol=1e-6)
    net.set_multiplier(1.0)
    net.remove()
    assert torch.equal(unet_out(model, inputs), base)
    assert "lora" not in " ".join(model.unet.state_dict())  # the base model's keys are untouched


def test_multiplier_scales_the_delta_linearly(model):
    """For a single layer, output(m) - base = m * delta . x exactly."""
    net = randomize(Network.create("lora", unet=None, text_encoder=model.text_encoder))
    name, module = next(net.adapter_modules())
    layer = net.targets[name].layer
    x = torch.randn(3, layer.in_features)
    base = layer(x)
    net.apply()
    net.set_multiplier(0.3)
    a = layer(x) - base
    net.set_multiplier(0.9)
    b = layer(x) - base
    assert torch.allclose(b, 3 * a, atol=1e-5)
    alpha, rank = float(module.alpha), module.lora_dim
    expected = 0.9 * (alpha / rank) * x @ (module.lora_up.weight @ module.lora_down.weight).T
    assert torch.allclose(b, expected, atol=1e-5)


def test_stacked_networks_add_up_and_merge_matches(model):
    inputs = unet_inputs(model)
    first = randomize(Network.create("lora", unet=model.unet, text_encoder=model.text_encoder), seed=1)
    second = randomize(Network.create("c3lier", unet=model.unet, text_encoder=model.text_encoder, options={"network_dim": 2}), seed=2)
    first.apply()
    second.apply()
    first.set_multiplier(0.8)
    second.set_multiplier(-0.5)
    patched_unet, patched_te = unet_out(model, inputs), te_out(model, TOKENS)
    first.merge_to()
    assert not first.applied
    assert torch.allclose(unet_out(model, inputs), patched_unet, atol=1e-5)  # second still patched on top
    second.merge_to()
    assert torch.allclose(unet_out(model, inputs), patched_unet, atol=1e-5)
    assert torch.allclose(te_out(model, TOKENS), patched_te, atol=1e-5)
    assert not any("_adapt_modules" in m.__dict__ for m in model.unet.modules())


def test_merged_weight_equals_formula(model):
    net = randomize(Network.create("c3lier", unet=model.unet, text_encoder=None, options={"network_dim": 4, "network_alpha": 2, "conv_alpha": 3}))
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    layer = net.targets[name].layer
    before = layer.weight.detach().clone()
    module = getattr(net, name)
    up, down = module.lora_up.weight.detach(), module.lora_down.weight.detach()
    expected = before + 0.7 * (3 / 4) * torch.einsum("ok,kihw->oihw", up[:, :, 0, 0], down)
    net.merge_to(multiplier=0.7)
    assert torch.allclose(layer.weight, expected, atol=1e-5)


def test_train_unet_only_and_te_only(model):
    unet_only = Network.create("lora", unet=model.unet, text_encoder=None)
    te_only = Network.create("lora", unet=None, text_encoder=model.text_encoder)
    assert all(n.startswith("lora_unet") for n, _ in unet_only.adapter_modules())
    assert all(n.startswith("lora_te") for n, _ in te_only.adapter_modules())


def test_dylora_rules():
    model = build_tiny_model()
    with pytest.raises(NetworkOptionError, match="unit=3: must divide --network_dim 8"):
        Network.create("dylora", unet=model.unet, options={"network_dim": 8, "unit": 3})
    with pytest.raises(NetworkOptionError, match="conv_dim equal to --network_dim 8"):
        Network.create("dylora", unet=model.unet, options={"network_dim": 8, "conv_dim": 4})
    with pytest.raises(NetworkOptionError, match="'unti' is not an option of network type 'dylora' \\(did you mean 'unit'\\?\\)"):
        Network.create("dylora", unet=model.unet, options={"unti": 2})


def test_dylora_trains_one_unit_per_step():
    model = build_tiny_model()
    net = Network.create("dylora", unet=model.unet, options={"network_dim": 8, "unit": 2}).apply()
    net.train()
    torch.manual_seed(3)
    net.on_train_step(0)
    name, module = next((n, m) for n, m in net.adapter_modules() if n.endswith("attn1_to_q"))
    layer = net.targets[name].layer
    with torch.no_grad():
        module.lora_up.weight.normal_()
    x = torch.randn(2, 4, layer.in_features)
    layer(x).sum().backward()
    start = module.unit_start
    grad_rows = module.lora_down.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert grad_rows == list(range(start, start + 2))
    # the forward uses all ranks, scaled by sqrt(r / (b + unit))
    module.zero_grad()
    net.remove()
    base = layer(x)
    net.apply()
    expected = base + (module.scale * (8 / (start + 2)) ** 0.5) * x @ (module.lora_up.weight @ module.lora_down.weight).T
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_dylora_units_come_from_the_global_generator_module_by_module():
    """Each step every module draws one number from torch's generator, in network order (as kohya)."""
    model = build_tiny_model()
    net = Network.create("dylora", unet=model.unet, text_encoder=model.text_encoder,
                         options={"network_dim": 8, "unit": 2})
    torch.manual_seed(11)
    net.on_train_step(5)
    torch.manual_seed(11)
    draws = [int(torch.randint(0, 8, ())) for _ in net.adapter_modules()]
    assert [module.unit_start for _, module in net.adapter_modules()] == [b - b % 2 for b in draws]
    assert len(set(draws)) > 1


def test_dropouts_only_in_training(model):
    net = randomize(Network.create("lora", unet=None, text_encoder=model.text_encoder, options={"dropout": 0.5, "rank_dropout": 0.5, "module_dropout": 0.5}))
    net.apply()
    net.eval()
    first, second = te_out(model, TOKENS), te_out(model, TOKENS)
    assert torch.equal(first, second)
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(te_out(model, TOKENS), first)


def test_merge_refuses_non_finite(model):
    net = Network.create("lora", unet=None, text_encoder=model.text_encoder)
    name, module = next(net.adapter_modules())
    with torch.no_grad():
        module.lora_up.weight.fill_(float("nan"))
    before = net.targets[name].layer.weight.clone()
    with pytest.raises(NonFiniteError, match="non-finite"):
        net.merge_to()
    assert torch.equal(net.targets[name].layer.weight, before)
