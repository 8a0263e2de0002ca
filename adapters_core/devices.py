"""Turn a ``--device`` value into a torch device that exists on this machine."""

from __future__ import annotations

import torch

from adapters_core.errors import ConfigError


def _available(device: torch.device) -> bool:
    if device.type == "cpu" or device.type == "meta":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return bool(torch.backends.mps.is_available())
    backend = getattr(torch, device.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


def torch_device(name: str | torch.device | None, flag: str = "--device") -> torch.device:
    """The device ``name`` names (``None``: cuda when available, else cpu), checked to exist."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} {name}: not a device; expected cpu, cuda, cuda:N, mps or xpu") from None
    if not _available(device):
        raise ConfigError(f"{flag} {name}: no such device on this machine; use --device cpu")
    return device
