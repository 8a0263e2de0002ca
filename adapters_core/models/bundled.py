"""The configs shipped inside the package, so that nothing comes from the hub.

``configs/<name>/`` is laid out like a Diffusers model folder without weights:
``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``,
``scheduler/scheduler_config.json`` (and ``tokenizer/`` for the tiny model).
Names: ``sd_v1`` (SD 1.x), ``sd_v2`` (SD 2.x 512, epsilon), ``sd_v2_v`` (SD 2.x 768-v),
``tiny`` (the test/demo model of ``reference/interop.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

ConfigName = Literal["sd_v1", "sd_v2", "sd_v2_v", "tiny"]
Component = Literal["unet", "vae", "text_encoder", "scheduler"]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TINY_TOKENIZER_DIR = CONFIGS_DIR / "tiny" / "tokenizer"


def config_dir(name: ConfigName) -> Path:
    """The folder of one bundled config set."""
    folder = CONFIGS_DIR / name
    if not folder.is_dir():
        raise KeyError(f"no bundled config set {name!r}; expected sd_v1, sd_v2, sd_v2_v or tiny")
    return folder


def load_config(name: ConfigName, component: Component) -> dict[str, Any]:
    """One component's config as a dict (a fresh copy each call)."""
    return read_config(config_dir(name), component)


def read_config(folder: Path, component: str) -> dict[str, Any]:
    """One component's config of a config set laid out like a Diffusers folder (a plugin's own
    bundled configs too): ``folder/<component>/config.json`` (``scheduler_config.json``)."""
    filename = "scheduler_config.json" if component == "scheduler" else "config.json"
    config: dict[str, Any] = json.loads((folder / component / filename).read_text())
    return config
