"""Dataset configuration: kohya's ``--dataset_config`` toml and folder mode, as dataclasses.

kohya lets every inheritable value be written on a subset, its dataset, ``[general]`` or the
command line; the most specific one wins, then the built-in default. Both entry points below build
the same :class:`DatasetGroupConfig`, so the dataset never needs to know where a value came from.
Every check that needs no image (keys, types, bucket settings, incompatible flags) happens here.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from adapters_core.errors import ConfigError, DatasetError
from adapters_core.textfiles import read_toml
from adapters_core.train.dataset.buckets import check_bucket_settings

log = logging.getLogger(__name__)

Reso = tuple[int, int]


@dataclass(frozen=True)
class SubsetConfig:
    """One image folder (DreamBooth) or one metadata file (fine-tuning) and how to read it."""

    image_dir: Optional[str] = None
    num_repeats: int = 1
    class_tokens: Optional[str] = None
    is_reg: bool = False
    caption_extension: str = ".caption"
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: Optional[str] = None
    enable_wildcard: bool = False
    color_aug: bool = False
    flip_aug: bool = False
    face_crop_aug_range: Optional[tuple[float, float]] = None
    random_crop: bool = False
    caption_prefix: Optional[str] = None
    caption_suffix: Optional[str] = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0
    metadata_file: Optional[str] = None
    alpha_mask: bool = False
    # Accepted for kohya compatibility; every image is opened at construction anyway, so a
    # size/caption cache would save nothing and is not written.
    cache_info: bool = False
    custom_attributes: Optional[dict[str, Any]] = None

    @property
    def is_finetuning(self) -> bool:
        """Fine-tuning subsets take captions from a metadata file instead of caption files."""
        return self.metadata_file is not None


@dataclass
class DatasetConfig:
    """A set of subsets that share resolution, batch size and buckets."""

    subsets: list[SubsetConfig]
    resolution: Reso
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    network_multiplier: float = 1.0
    validation_split: float = 0.0
    validation_seed: Optional[int] = None

    @property
    def is_dreambooth(self) -> bool:
        """kohya's dataset kind; a dataset is never a mix of the two (checked at load time)."""
        return not any(s.is_finetuning for s in self.subsets)


@dataclass
class DatasetGroupConfig:
    """All datasets of one run. ``source`` is the toml file, or None in folder mode."""

    datasets: list[DatasetConfig]
    source: Optional[Path] = None

    @property
    def user_config(self) -> bool:
        """kohya writes different dataset metadata with and without ``--dataset_config``."""
        return self.source is not None


# Expected kind of every key; the test suite checks that this covers every dataclass field.
KEY_KINDS: dict[str, str] = {
    **dict.fromkeys(
        ["shuffle_caption", "is_reg", "enable_wildcard", "color_aug", "flip_aug", "random_crop",
         "alpha_mask", "cache_info", "enable_bucket", "bucket_no_upscale"], "bool"),
    **dict.fromkeys(
        ["num_repeats", "keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min",
         "batch_size", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "validation_seed"], "int"),
    **dict.fromkeys(
        ["caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step", "network_multiplier",
         "validation_split"], "float"),
    **dict.fromkeys(
        ["image_dir", "class_tokens", "caption_extension", "caption_separator", "keep_tokens_separator",
         "secondary_separator", "caption_prefix", "caption_suffix", "metadata_file"], "str"),
    "resolution": "reso",
    "face_crop_aug_range": "range",
    "custom_attributes": "table",
}
SUBSET_ONLY_KEYS = frozenset({"image_dir", "is_reg", "alpha_mask", "metadata_file"})
DREAMBOOTH_ONLY_KEYS = frozenset({"is_reg", "class_tokens", "caption_extension", "cache_info"})
INHERITABLE_KEYS = frozenset(f.name for f in fields(SubsetConfig)) - SUBSET_ONLY_KEYS
DATASET_KEYS = frozenset(f.name for f in fields(DatasetConfig)) - {"subsets"}
_SECTION_KEYS = {
    "[general]": DATASET_KEYS | INHERITABLE_KEYS,
    "[[datasets]]": DATASET_KEYS | INHERITABLE_KEYS | {"subsets"},
    "[[datasets.subsets]]": INHERITABLE_KEYS | SUBSET_ONLY_KEYS,
}
# Keys that describe one folder; anything else on the command line (even --alpha_mask) is a default.
_PER_FOLDER_KEYS = frozenset({"image_dir", "is_reg", "metadata_file"})
# argparse spells two options differently from the toml keys.
_CLI_RENAMES = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}
_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
             "reso": "an integer or [width, height]", "range": "[low, high] numbers",
             "table": "a table"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _coerce(key: str, value: Any, where: str, from_cli: bool) -> Any:
    """Check one value against its kind; command-line strings ('512,768') are parsed too."""
    kind = KEY_KINDS[key]
    if kind in ("reso", "range") and from_cli and isinstance(value, str):
        try:
            parts = [(int if kind == "reso" else float)(p) for p in value.split(",")]
            value = parts[0] if kind == "reso" and len(parts) == 1 else parts
        except ValueError:
            pass  # reported below with the original text
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": _is_int,
        "float": lambda v: _is_int(v) or isinstance(v, float),
        "str": lambda v: isinstance(v, str),
        "reso": lambda v: (_is_int(v) and v > 0) or (isinstance(v, (list, tuple)) and len(v) == 2
                                                     and all(_is_int(x) and x > 0 for x in v)),
        "range": lambda v: isinstance(v, (list, tuple)) and len(v) == 2
        and all(_is_int(x) or isinstance(x, float) for x in v) and v[0] <= v[1],
        "table": lambda v: isinstance(v, dict),
    }[kind](value)
    if not ok:
        raise ConfigError(f"{where}: '{key}' must be {_EXPECTED[kind]}, got {type(value).__name__} {value!r}")
    if kind == "reso":
        return (value, value) if _is_int(value) else (int(value[0]), int(value[1]))
    if kind == "range":
        return (float(value[0]), float(value[1]))
    return float(value) if kind == "float" else value


def _section_layer(raw: Any, section: str, where: str) -> dict[str, Any]:
    """Validate the keys of one toml table and coerce its values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {section} must be a table, got {type(raw).__name__}")
    allowed = _SECTION_KEYS[section]
    for key in raw:
        if key in allowed:
            continue
        if key in DATASET_KEYS:
            hint = "it is a dataset key; set it in [[datasets]] or [general]"
        elif key in SUBSET_ONLY_KEYS:
            hint = "it is a subset-only key; set it in [[datasets.subsets]]"
        else:
            close = difflib.get_close_matches(key, sorted(set().union(*_SECTION_KEYS.values())), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see the kohya dataset config keys"
        raise DatasetError(f"{where}: unknown key '{key}' in {section}; {hint}")
    return {k: _coerce(k, v, where, False) for k, v in raw.items() if k != "subsets"}


def _cli_layer(cli_defaults: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Keep the argparse values that are dataset keys; None means 'not given', as in argparse."""
    layer: dict[str, Any] = {}
    for name, value in (cli_defaults or {}).items():
        key = _CLI_RENAMES.get(name, name)
        if value is not None and key in KEY_KINDS and key not in _PER_FOLDER_KEYS:
            layer[key] = _coerce(key, value, f"command line --{name}", True)
    return layer


def _resolve(key: str, layers: Sequence[Mapping[str, Any]], default: Any) -> Any:
    return next((layer[key] for layer in layers if key in layer), default)


def _build_subset(layers: Sequence[Mapping[str, Any]], where: str) -> SubsetConfig:
    """Resolve a subset (subset-only keys cannot be in the other layers: checked per section)."""
    subset = SubsetConfig(**{f.name: _resolve(f.name, layers, f.default) for f in fields(SubsetConfig)})
    if subset.is_finetuning:
        wrong = sorted(k for k in DREAMBOOTH_ONLY_KEYS & layers[0].keys())
        if wrong:
            raise DatasetError(f"{where}: '{wrong[0]}' is a DreamBooth key; a subset with metadata_file "
                               f"is a fine-tuning subset")
    elif subset.image_dir is None:
        raise DatasetError(f"{where}: 'image_dir' is required (or 'metadata_file' for fine-tuning)")
    return subset


def _build_dataset(subsets: list[SubsetConfig], layers: Sequence[Mapping[str, Any]], where: str,
                   cli_defaults: Optional[Mapping[str, Any]]) -> DatasetConfig:
    """Resolve the dataset keys and run every check that needs no image."""
    kinds = {s.is_finetuning for s in subsets}
    if len(kinds) > 1:
        raise DatasetError(f"{where}: DreamBooth subsets (image_dir) and fine-tuning subsets "
                           f"(metadata_file) may not share a dataset; put them in separate [[datasets]]")
    values = {f.name: _resolve(f.name, layers, f.default) for f in fields(DatasetConfig)
              if f.name not in ("subsets", "resolution")}
    resolution = _resolve("resolution", layers, None)
    if resolution is None:
        raise ConfigError(f"{where}: 'resolution' is required; set it in [[datasets]], [general] or --resolution")
    ds = DatasetConfig(subsets=subsets, resolution=resolution, **values)
    if ds.batch_size < 1:
        raise ConfigError(f"{where}: 'batch_size' must be at least 1, got {ds.batch_size}")
    if ds.validation_split > 0:
        raise ConfigError(f"{where}: 'validation_split' is not supported by adapt yet; remove it or set 0")
    ds.min_bucket_reso, ds.max_bucket_reso = check_bucket_settings(
        ds.resolution, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso, ds.bucket_reso_steps, where)
    if cli_defaults and (cli_defaults.get("cache_latents") or cli_defaults.get("cache_latents_to_disk")):
        check_latents_cacheable(ds, where)
    return ds


def check_latents_cacheable(dataset: DatasetConfig, where: str) -> None:
    """Cached latents are encoded once, so per-step pixel augmentations would be silently lost."""
    for s in dataset.subsets:
        if s.color_aug or s.random_crop:
            raise ConfigError(f"{where}: --cache_latents cannot be used with color_aug or random_crop "
                              f"(set on subset {s.image_dir or s.metadata_file}); disable one of them")


def load_dataset_config(toml_path: str | Path, cli_defaults: Optional[Mapping[str, Any]] = None
                        ) -> DatasetGroupConfig:
    """Parse a kohya ``--dataset_config`` file; ``cli_defaults`` are the argparse values."""
    path = Path(toml_path)
    raw = read_toml(path, f"--dataset_config {path}")
    for key in raw:
        if key not in ("general", "datasets"):
            close = difflib.get_close_matches(key, ["general", "datasets"], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "only [general] and [[datasets]] are allowed"
            raise DatasetError(f"{path}: unknown top-level key '{key}'; {hint}")
    cli = _cli_layer(cli_defaults)
    general = _section_layer(raw.get("general", {}), "[general]", f"{path} [general]")
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise DatasetError(f"{path}: expected at least one [[datasets]] table with [[datasets.subsets]]")
    datasets = []
    for i, ds_raw in enumerate(datasets_raw, 1):
        where = f"{path} [[datasets]] #{i}"
        ds_layer = _section_layer(ds_raw, "[[datasets]]", where)
        subsets_raw = ds_raw.get("subsets")
        if not isinstance(subsets_raw, list) or not subsets_raw:
            raise DatasetError(f"{where}: no [[datasets.subsets]]; each dataset needs at least one subset")
        subsets = []
        for j, sub_raw in enumerate(subsets_raw, 1):
            sub_where = f"{where} [[datasets.subsets]] #{j}"
            layer = _section_layer(sub_raw, "[[datasets.subsets]]", sub_where)
            subsets.append(_build_subset([layer, ds_layer, general, cli], sub_where))
        datasets.append(_build_dataset(subsets, [ds_layer, general, cli], where, cli_defaults))
    return DatasetGroupConfig(datasets=datasets, source=path)


def parse_folder_name(name: str) -> Optional[tuple[int, str]]:
    """``'10_sks dog'`` → ``(10, 'sks dog')``, split on '_' as kohya does; None if no leading int."""
    head, _, rest = name.partition("_")
    try:
        return int(head), rest
    except ValueError:
        return None


def _folder_subsets(base: Path, is_reg: bool, flag: str) -> list[dict[str, Any]]:
    """One subset per ``<repeats>_<class tokens>`` subfolder; others are skipped with a warning."""
    if not base.is_dir():
        raise DatasetError(f"{flag} {base}: not a folder")
    found = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        parsed = parse_folder_name(sub.name)
        if parsed is None or parsed[0] < 1:
            log.warning("ignoring folder without a repeat count (expected '<repeats>_<class tokens>'): %s", sub)
            continue
        found.append({"image_dir": str(sub), "num_repeats": parsed[0], "class_tokens": parsed[1], "is_reg": is_reg})
    if not found:
        raise DatasetError(f"{flag} {base}: no subfolder named '<repeats>_<class tokens>' "
                           f"(for example '10_sks dog') was found")
    return found


def config_from_folders(train_data_dir: Optional[str | Path], reg_data_dir: Optional[str | Path] = None,
                        cli_defaults: Optional[Mapping[str, Any]] = None) -> DatasetGroupConfig:
    """Folder mode (no ``--dataset_config``): one dataset built from the command-line values.

    With ``in_json`` in ``cli_defaults`` the train folder is a fine-tuning image folder instead.
    """
    if train_data_dir is None:
        raise ConfigError("--train_data_dir: required when --dataset_config is not given")
    cli = _cli_layer(cli_defaults)
    in_json = (cli_defaults or {}).get("in_json")
    if in_json is not None:
        layers = [{"image_dir": str(train_data_dir), "metadata_file": str(in_json)}]
    else:
        layers = _folder_subsets(Path(train_data_dir), False, "--train_data_dir")
        if reg_data_dir is not None:
            layers += _folder_subsets(Path(reg_data_dir), True, "--reg_data_dir")
    subsets = [_build_subset([layer, cli], f"--train_data_dir {layer['image_dir']}") for layer in layers]
    dataset = _build_dataset(subsets, [cli], "command line", cli_defaults)
    return DatasetGroupConfig(datasets=[dataset], source=None)


__all__ = [
    "SubsetConfig", "DatasetConfig", "DatasetGroupConfig", "load_dataset_config", "config_from_folders",
    "parse_folder_name", "check_latents_cacheable", "KEY_KINDS",
]
