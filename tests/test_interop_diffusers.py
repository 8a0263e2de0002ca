"""Files we write load in diffusers (`load_lora_weights`) with the same math as adapt's own patching."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize, te_out, unet_inputs, unet_out

from adapters_core.models import build_tiny_model, to_pipeline
from adapters_core.network import Network

TOKENS = torch.tensor([[0, 7, 12, 40, 1, 1]])


@pytest.mark.parametrize(
    ("network", "options"),
    [("lora", {"network_dim": 4, "network_alpha": 2}), ("c3lier", {"network_dim": 4, "network_alpha": 2, "conv_dim": 3, "conv_alpha": 1})],
)
def test_diffusers_load_lora_weights_matches_adapt(tmp_path, network, options):
    model = build_tiny_model(seed=0)
    pipe = to_pipeline(copy.deepcopy(model))
    net = randomize(Network.create(network, unet=model.unet, text_encoder=model.text_encoder, options=options), seed=4, std=0.2)
    path = tmp_path / f"{network}.safetensors"
    net.save(path)
    net.apply()
    inputs = unet_inputs(model)
    ours_unet, ours_te = unet_out(model, inputs), te_out(model, TOKENS)
    base_unet = unet_out(type("M", (), {"unet": pipe.unet, "text_encoder": pipe.text_encoder}), inputs)

    pipe.load_lora_weights(str(path))
    theirs = type("M", (), {"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    theirs_unet, theirs_te = unet_out(theirs, inputs), te_out(theirs, TOKENS)
    assert (ours_unet - base_unet).abs().max() > 1e-2  # the adapter really changes the output
    assert torch.allclose(theirs_unet, ours_unet, atol=1e-4), (theirs_unet - ours_unet).abs().max()
    assert torch.allclose(theirs_te, ours_te, atol=1e-4), (theirs_te - ours_te).abs().max()
