"""Reading the text files users hand adapt (configs, prompt files, captions): UTF-8, one-line errors.

Every reader says which flag the file came from, and why it cannot be used: missing, a
folder, not UTF-8 (with the byte where decoding stopped), not valid TOML or JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from adapters_core.errors import AdaptError, ConfigError


def read_text(path: str | os.PathLike[str], where: str, error: type[AdaptError] = ConfigError) -> str:
    """The file's text (UTF-8; a byte-order mark is dropped)."""
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(f"{where}: cannot read: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: cannot read: it is a folder; expected a file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror or exc})") from None


def read_toml(path: str | os.PathLike[str], where: str) -> dict[str, Any]:
    """A TOML file as a dict."""
    try:
        return tomllib.loads(read_text(path, where))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None


def read_json(path: str | os.PathLike[str], where: str, error: type[AdaptError] = ConfigError) -> Any:
    """A JSON file's value."""
    try:
        return json.loads(read_text(path, where, error))
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON: {exc}") from None
