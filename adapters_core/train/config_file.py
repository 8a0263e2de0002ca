"""kohya's ``--config_file``: a toml of training arguments, and ``--output_config`` to write one.

As in kohya, tables are flattened one level (``[model] pretrained_model_name_or_path = ...``
is the same as the key at top level), keys are flag names, and flags given on the command line
override the file. Unlike kohya, unknown keys and wrongly typed values are errors that name the
key, instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapters_core.atomic import atomic_path
from adapters_core.errors import ConfigError
from adapters_core.textfiles import read_toml
from adapters_core.train.args import (
    check_range,
    field_defaults,
    field_specs,
)
from adapters_core.train.unsupported_flags import IGNORED_FLAGS, UNSUPPORTED

log = logging.getLogger(__name__)

COMMAND_LINE = "command line"

# Not written by --output_config (they describe the run of the command itself).
_NOT_SAVED = ("config_file", "output_config", "overwrite")


def config_path(name: str) -> Path:
    """kohya adds ``.toml`` when the name lacks it."""
    return Path(name if name.endswith(".toml") else name + ".toml")


def flatten(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One level of tables merged into the top level; a key given twice is an error."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in items:
            name = name.replace("-", "_")
            if name in flat:
                raise ConfigError(f"{source}: '{name}' is given twice")
            flat[name] = item
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _where(name: str, source: str) -> str:
    return f"--{name}" if source == COMMAND_LINE else f"{source}: '{name}'"


def coerce(name: str, value: Any, source: str) -> Any:
    """A toml value checked and converted to the type of TrainArgs field ``name``."""
    spec = field_specs()[name]
    kind, kind_type = spec["kind"], spec["type"]

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{name}' must be {expected}, got {type(value).__name__} {value!r}")

    if kind == "flag":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind == "list":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if kind_type is float:
            if not all(_is_number(v) for v in items):
                raise fail("a number or a list of numbers")
            numbers = tuple(float(v) for v in items)
            check_range(name, numbers, _where(name, source))
            return numbers
        if not all(isinstance(v, str) for v in items):
            raise fail("a string or a list of strings")
        return tuple(items)
    if kind == "int_or_float":
        if isinstance(value, str):
            value = parse_int_or_float(value, f"{source}: '{name}'")
        elif not _is_number(value):
            raise fail("an integer or a fraction")
        check_range(name, value, _where(name, source))
        return value
    if name == "resolution" and isinstance(value, (int, list)):
        parts = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in parts):
            raise fail("'size', 'width,height', an integer or [width, height]")
        value = ",".join(str(v) for v in parts)
    if kind_type is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise fail("an integer")
    if kind_type is float:
        if not _is_number(value):
            raise fail("a number")
        value = float(value)
    if kind_type is str and not isinstance(value, str):
        raise fail("a string")
    if spec["choices"] and value not in spec["choices"]:
        choices = ", ".join(str(c) for c in spec["choices"] if c is not None)
        raise ConfigError(f"{source}: '{name}' = {value!r}; expected one of {choices}")
    check_range(name, value, _where(name, source))
    return value


def parse_int_or_float(text: str, where: str) -> int | float:
    """kohya's ``int_or_float``: "100" -> 100, "0.1" -> 0.1."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer or a fraction, got '{text}'") from None


def check_unsupported(name: str, value: Any, source: str) -> bool:
    """Raise for a kohya option adapt does not implement; True if ``name`` is such an option.

    An unsupported option set to an "off" value (false, empty, 0) is accepted silently, so
    configs written by kohya's ``--output_config`` with explicit defaults still load.
    """
    if name in IGNORED_FLAGS:
        if value:
            log.warning("%s: %s has no effect in adapt (%s)", source, name, IGNORED_FLAGS[name])
        return True
    if name in UNSUPPORTED:
        if value not in (False, None, "", 0, 0.0, [], ()):
            raise ConfigError(f"{source}: '{name}' is a kohya option adapt does not support: {UNSUPPORTED[name]}")
        return True
    return False


def load_config_file(name: str) -> dict[str, Any]:
    """The arguments of a ``--config_file`` toml, typed like TrainArgs."""
    path = config_path(name)
    source = f"--config_file {path}"
    raw = read_toml(path, source)
    known = field_specs()
    values: dict[str, Any] = {}
    for key, value in flatten(raw, source).items():
        if check_unsupported(key, value, source):
            continue
        if key not in known or key in ("config_file", "output_config"):
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown argument '{key}'{hint}")
        values[key] = coerce(key, value, source)
    return values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON strings are TOML basic strings


def write_config_file(name: str, values: Mapping[str, Any], overwrite: bool = False) -> Path:
    """``--output_config``: the non-default arguments as a toml that ``--config_file`` reads."""
    path = config_path(name)
    defaults = field_defaults()
    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in values.items()
        if key not in _NOT_SAVED and value is not None and value != defaults.get(key)
    ]
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
