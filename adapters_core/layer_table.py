"""Every layer an adapter file may adapt in a family's bundled model, without the model.

Tools that read adapter files with no model at hand (``inspect``, ``check``, ``convert``,
the adapter-only merges) need the bundled model's layer names, paths, kinds and shapes, and
the other spellings files use for the names, not its weights. Building the model on the
``meta`` device gives them but imports diffusers and transformers (seconds of start-up);
a :class:`LayerTable` holds the same facts as plain data. A family may ship its tables as
JSON (:meth:`LayerTable.read`; ``scripts/write_layer_tables.py`` writes them and a test
checks they equal the built model's), else they are built once per process
(:meth:`ModelFamily.layer_table`). Targets made from a table carry stand-in layers on
``meta`` with the real weight shapes, which is all naming, matching and shape checks use.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from adapters_core.family import ModelFamily
    from adapters_core.targets import Target

_FIELDS = ("name", "component", "role", "module_path", "layer_kind", "shape", "in_conv_block", "block_index")


@dataclass(frozen=True)
class LayerRow:
    """One layer: its kohya name, component, path and weight shape (a :class:`Target` without the layer)."""

    name: str
    component: str
    role: str
    module_path: str
    layer_kind: str
    shape: tuple[int, ...]
    in_conv_block: bool
    block_index: int


StateDictShapes = Mapping[str, tuple[int, ...]]  # a component's state-dict key -> shape


@dataclass(frozen=True)
class LayerTable:
    """The layers of one model in :func:`~adapters_core.matching.loadable_targets` order, the
    other spellings of their names (:meth:`ModelFamily.module_aliases`), and each built
    component's state-dict keys and shapes (what a Diffusers folder of the model stores: the
    streamed folder merge takes a folder whose files hold exactly these for what it is, without
    building the model)."""

    rows: tuple[LayerRow, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    state_dicts: Mapping[str, StateDictShapes] = field(default_factory=dict)

    @classmethod
    def of(cls, family: ModelFamily, components: Mapping[str, nn.Module | None]) -> LayerTable:
        """The table of built components (weights may be on ``meta``); components that hold no
        adaptable layer (a VAE) add their state dict only."""
        from adapters_core.matching import loadable_targets
        from adapters_core.targets import layer_weight

        targets = loadable_targets(family, components)
        rows = tuple(
            LayerRow(t.name, t.component, t.role, t.module_path, t.layer_kind, tuple(layer_weight(t.layer).shape),
                     t.in_conv_block, t.block_index)
            for t in targets
        )
        state_dicts = {
            name: {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}
            for name, module in components.items()
            if module is not None
        }
        return cls(rows, dict(family.module_aliases(components, targets)), state_dicts)

    def only(self, components: Iterable[str]) -> LayerTable:
        """The rows of some components (the aliases of those rows' names)."""
        keep = set(components)
        rows = tuple(row for row in self.rows if row.component in keep)
        names = {row.name for row in rows}
        return LayerTable(
            rows,
            {alias: name for alias, name in self.aliases.items() if name in names},
            {name: keys for name, keys in self.state_dicts.items() if name in keep},
        )

    def __add__(self, other: LayerTable) -> LayerTable:
        return LayerTable(
            self.rows + other.rows, {**self.aliases, **other.aliases}, {**self.state_dicts, **other.state_dicts}
        )

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {row.name: row.shape for row in self.rows}

    def targets(self) -> list[Target]:
        """The layers as targets, each with a stand-in layer on ``meta`` of the real weight shape."""
        from adapters_core.targets import Target

        return [
            Target(row.name, _stand_in(row.layer_kind, row.shape), row.component, row.block_index, row.layer_kind,
                   row.in_conv_block, row.module_path, row.role)
            for row in self.rows
        ]

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self) -> str:
        rows = [[getattr(row, name) for name in _FIELDS] for row in self.rows]
        state_dicts = {name: dict(keys) for name, keys in sorted(self.state_dicts.items())}
        text = json.dumps(
            {"fields": _FIELDS, "rows": rows, "aliases": dict(sorted(self.aliases.items())), "state_dicts": state_dicts},
            separators=(",", ":"),
        )
        return text.replace("],[", "],\n[").replace("],\"", "],\n\"") + "\n"

    @classmethod
    def read(cls, path: Path) -> LayerTable:
        return cls.read_text(path.read_text(encoding="utf-8"), path)

    @classmethod
    def read_text(cls, text: str, source: object = "layer table") -> LayerTable:
        data = json.loads(text)
        if tuple(data["fields"]) != _FIELDS:
            raise ValueError(f"{source}: a layer table with fields {data['fields']}, expected {list(_FIELDS)}")
        rows = tuple(
            LayerRow(name, component, role, path_, kind, tuple(shape), bool(conv), int(block))
            for name, component, role, path_, kind, shape, conv, block in data["rows"]
        )
        state_dicts = {
            name: {key: tuple(shape) for key, shape in keys.items()} for name, keys in data.get("state_dicts", {}).items()
        }
        return cls(rows, dict(data["aliases"]), state_dicts)


def _stand_in(layer_kind: str, shape: tuple[int, ...]) -> nn.Module:
    from torch import nn

    if layer_kind == "linear":
        return nn.Linear(shape[1], shape[0], device="meta")
    return nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), device="meta")  # type: ignore[arg-type]


def shipped_or_built(family: ModelFamily, folder: Path) -> LayerTable:
    """``folder/<family name>.json`` where the family ships it, else the contract's default
    (:meth:`ModelFamily.layer_table`: built on "meta")."""
    from adapters_core.family import ModelFamily

    path = folder / f"{family.name}.json"
    if path.is_file():
        return LayerTable.read(path)
    return ModelFamily.layer_table(family)


@functools.cache
def bundled_layer_table(family_name: str) -> LayerTable:
    """The layer table of an installed family's bundled model (read or built once per process)."""
    from adapters_core.plugins import get_registry

    return get_registry().family(family_name).layer_table()
