"""Write the layer tables the built-in model families ship (``plugins/adapt_*/tables/``).

Run after changing a bundled config or the target rules; tests/test_layer_tables.py fails
while a shipped table differs from the model built from the configs.

    .venv/bin/python scripts/write_layer_tables.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from adapters_core.layer_table import LayerTable
from adapters_core.ops.merge_folder import weighted_components
from adapters_core.plugins import get_registry

SHIPPING_PACKAGES = ("adapt_sd", "adapt_sdxl")


def main() -> int:
    for family in get_registry().families.values():
        package = type(family).__module__.split(".")[0]
        if package not in SHIPPING_PACKAGES:
            continue
        folder = Path(sys.modules[type(family).__module__].__file__ or "").with_name("tables")
        folder.mkdir(exist_ok=True)
        table = LayerTable.of(family, weighted_components(family))  # with the VAE's state dict
        path = folder / f"{family.name}.json"
        path.write_text(table.to_json(), encoding="utf-8")
        keys = sum(map(len, table.state_dicts.values()))
        print(f"{path}: {len(table.rows)} layers, {len(table.aliases)} aliases, {keys} state-dict keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
