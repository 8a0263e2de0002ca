"""Small helpers shared by tests (imported as ``helpers``)."""

from __future__ import annotations

import torch

from adapters_core.network import Network


def randomize(network: Network, seed: int = 0, std: float = 0.05) -> Network:
    """Give every adapter parameter random values (a trained-looking adapter)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return network


def unet_inputs(model, seed: int = 0, batch: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 16, 16, generator=generator)
    context = torch.randn(batch, 77, model.text_encoder.config.hidden_size, generator=generator)
    return sample, torch.tensor([500] * batch), context


def unet_out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.unet(*inputs).sample


def te_out(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.text_encoder(tokens).last_hidden_state
