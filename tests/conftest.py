"""Shared fixtures: offline mode, a registry with faked entry points."""

from __future__ import annotations

import os
from importlib import metadata

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapters_core import plugins  # noqa: E402


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Add entry points (``name -> "module:object"``) to the ``adapt.networks`` group (or
    ``group``, e.g. ``adapt.models``) for one test.

    The extra entry points belong to a fake distribution ``adapt-test-plugins 9.9``.
    """

    real = plugins.entry_points

    def install(extra: dict[str, str], group: str = plugins.ENTRY_POINT_GROUP):
        class FakeDist:
            name = "adapt-test-plugins"
            version = "9.9"

        added = [
            metadata.EntryPoint(name=name, value=value, group=group)._for(FakeDist())  # type: ignore[attr-defined]  # private
            for name, value in extra.items()
        ]

        def fake(group: str):
            return [*real(group=group), *(ep for ep in added if ep.group == group)]

        monkeypatch.setattr(plugins, "entry_points", fake)
        plugins.reset_registry()
        return plugins.get_registry()

    yield install
    plugins.reset_registry()
