"""The layer tables the built-in families ship equal the models built from their configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapters_core.layer_table import LayerTable
from adapters_core.ops.merge_folder import weighted_components
from adapters_core.plugins import get_registry
from adapters_core.targets import layer_weight

SHIPPED = ["sd1", "sd2", "tiny", "sdxl", "tiny_sdxl"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_table_equals_the_built_model(name: str) -> None:
    family = get_registry().family(name)
    shipped = family.layer_table()
    tables = Path(__import__(type(family).__module__, fromlist=["_"]).__file__ or "").with_name("tables")
    assert (tables / f"{name}.json").is_file()  # read, not built
    built = LayerTable.of(family, weighted_components(family))
    assert shipped.rows == built.rows
    assert dict(shipped.aliases) == dict(built.aliases)
    assert set(shipped.state_dicts) == {row.component for row in shipped.rows} | {"vae"}
    assert {name: dict(keys) for name, keys in shipped.state_dicts.items()} == {
        name: dict(keys) for name, keys in built.state_dicts.items()
    }


def test_targets_from_a_table_stand_in_with_the_real_shapes() -> None:
    family = get_registry().family("tiny")
    components = family.build_components(device="meta")
    table = LayerTable.of(family, components)
    assert LayerTable.read_text(table.to_json()) == table
    from adapters_core.matching import loadable_targets

    real = {t.name: t for t in loadable_targets(family, components)}
    for target in table.targets():
        original = real[target.name]
        assert layer_weight(target.layer).shape == layer_weight(original.layer).shape
        assert target.layer.weight.device == torch.device("meta")
        assert (target.component, target.layer_kind, target.block_index, target.module_path) == (
            original.component, original.layer_kind, original.block_index, original.module_path)
    unet_only = table.only(["unet"])
    assert {row.component for row in unet_only.rows} == {"unet"}
    assert set(unet_only.aliases.values()) <= {row.name for row in unet_only.rows}
