"""Adapter files: safetensors (kohya keys + string metadata) and pickled ``.ckpt``/``.pt``.

Reading validates the container (a corrupt safetensors header is a :class:`FormatError`,
pickles load with ``weights_only=True``). Writing casts, checks every tensor is finite,
adds the ``sshs_*`` hashes and goes through a temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from adapters_core.atomic import atomic_path
from adapters_core.choices import INPUT_SUFFIXES, PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from adapters_core.errors import FormatError, NonFiniteError
from adapters_core.finite import all_finite

LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000

PRECISIONS: dict[str, torch.dtype] = {
    "float": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def precision_dtype(name: str | None, flag: str = "--save_precision") -> torch.dtype | None:
    """``"fp16"`` -> ``torch.float16``; ``None`` stays ``None`` (keep the tensors' dtype)."""
    if name is None:
        return None
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise FormatError(f"{flag} {name}: expected one of float, fp16, bf16") from None


@dataclass
class AdapterFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: Path) -> dict[str, object]:
    """The JSON header of a safetensors file, with a clear error when it is not one."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > path.stat().st_size - 8:
                raise FormatError(f"{path}: corrupt safetensors header (declares {length} bytes, file is smaller)")
            header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def is_safetensors(path: Path, what: str = "file type") -> bool:
    """How every reader tells the format, by suffix: True for ``.safetensors``, False for a
    pickle (:data:`~adapters_core.choices.PICKLE_SUFFIXES`); any other name is refused."""
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return True
    if suffix in PICKLE_SUFFIXES:
        return False
    expected = f"{', '.join(INPUT_SUFFIXES[:-1])} or {INPUT_SUFFIXES[-1]}"
    raise FormatError(f"{path}: unknown {what} '{path.suffix}'; expected {expected}")


def weights_header(path: Path) -> dict[str, object]:
    """The header of a safetensors file read as weights (before any tensor): a damaged one is
    "not a readable safetensors file", with the reason."""
    try:
        return read_safetensors_header(path)
    except FormatError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise FormatError(f"{path}: not a readable safetensors file: {reason}") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file; a damaged file is one FormatError."""
    weights_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except Exception as error:  # safetensors raises its own error types
        raise FormatError(f"{path}: not a readable safetensors file ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def torch_load_weights(path: Path, *, mmap: bool = False) -> object:
    """``torch.load(weights_only=True)`` with one-line errors: a pickle that holds anything but
    tensors and plain containers is refused (it is never executed), a truncated or corrupt file
    is named as such."""
    try:
        with warnings.catch_warnings():  # torch's note on a bare pickle's protocol is not the user's concern
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise FormatError(
                f"{path}: cannot be loaded with torch.load(weights_only=True): refused, the pickle holds Python "
                "objects besides tensors (adapt never runs code from a file); convert it to .safetensors with a "
                "tool you trust"
            ) from None
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({first_line(error)})") from None
    except RuntimeError as error:
        if mmap:  # files from the legacy (non-zip) torch.save cannot be memory-mapped
            return torch_load_weights(path, mmap=False)
        raise FormatError(
            f"{path}: not a complete PyTorch checkpoint (truncated or corrupt: {first_line(error)})"
        ) from None
    except (EOFError, ValueError, OSError, KeyError, AttributeError, ImportError, TypeError) as error:
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({first_line(error)})") from None


def pickled_tensors(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file: a ``state_dict`` sub-dict is unwrapped and
    non-tensor entries (``global_step`` and the like) are left out."""
    payload = torch_load_weights(path, mmap=mmap)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        raise FormatError(f"{path}: holds a {type(payload).__name__}; expected a dict of tensors")
    tensors = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if payload and not tensors:
        raise FormatError(f"{path}: holds no tensors; expected a dict of tensors")
    return tensors


def read_weights(path: Path, what: str = "file type") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a ``.safetensors`` or pickled file, and its metadata (none for pickles)."""
    if is_safetensors(path, what):
        return read_safetensors(path)
    return pickled_tensors(path), {}


def check_adapter_tensors(file: AdapterFile) -> None:
    """Refuse NaN/inf anywhere and an ``alpha`` that is not a single number, naming the module."""
    for key, tensor in file.tensors.items():
        module, _, name = key.partition(".")
        if key.endswith(".alpha") and tensor.numel() != 1:
            raise FormatError(
                f"{file.path}: module {module}: {name} has shape {tuple(tensor.shape)}; an alpha must be a single number"
            )
        if not all_finite(tensor):
            raise NonFiniteError(
                f"{file.path}: module {module}: {name} holds NaN or infinite values; "
                "a finite adapter is needed (nothing was written)"
            )


def load_adapter(path: str | os.PathLike[str], *, check: bool = True) -> AdapterFile:
    """Read an adapter file's tensors and metadata.

    With ``check`` (the default) NaN/inf tensors and non-scalar alphas are refused, so no
    command ever applies, merges or renders them.
    """
    file = Path(path)
    if file.is_dir():
        raise FormatError(f"{file}: is a folder; expected an adapter file (.safetensors, .ckpt or .pt)")
    if not file.is_file():
        raise FormatError(f"{file}: no such file")
    loaded = AdapterFile(file, *read_weights(file))
    if check:
        check_adapter_tensors(loaded)
    return loaded


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Only the metadata of a safetensors file (empty for pickles), without reading tensors."""
    file = Path(path)
    if file.suffix.lower() != SAFETENSORS_SUFFIX:
        return {}
    if not file.is_file():
        raise FormatError(f"{file}: no such file")
    header = read_safetensors_header(file)
    metadata = header.get("__metadata__", {})
    return dict(metadata) if isinstance(metadata, dict) else {}


def model_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` as kohya computes them.

    The state dict is serialised with only its ``ss_*`` metadata; the model hash is the
    SHA-256 of the bytes after the header, the legacy hash the first 8 hex digits of the
    SHA-256 of 64 KiB at offset 1 MiB of the same buffer.
    """
    ss_only = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    buffer = safetensors.torch.save(dict(tensors), metadata=ss_only)
    (header_length,) = struct.unpack("<Q", buffer[:8])
    model_hash = hashlib.sha256(buffer[8 + header_length :]).hexdigest()
    legacy = hashlib.sha256(buffer[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]
    return model_hash, legacy


def prepare_tensors(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, floating tensors cast to ``dtype``; non-finite values refused."""
    prepared: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        value = tensor.detach().to("cpu")
        if value.is_floating_point():
            if dtype is not None:
                value = value.to(dtype)
            if not all_finite(value):
                where = f" in {str(dtype).removeprefix('torch.')}" if dtype is not None else ""
                raise NonFiniteError(f"{key}: contains NaN or infinite values{where}; refusing to write the file")
        prepared[key] = value.contiguous()
    return prepared


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """The bytes the tensors take on disk (what a file of them needs, headers aside)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_adapter(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an adapter file atomically; safetensors get ``sshs_*`` hashes in the metadata."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
        raise FormatError(f"{target}: unknown output type '{target.suffix}'; use .safetensors, .ckpt or .pt")
    prepared = prepare_tensors(tensors, dtype)
    with atomic_path(target, overwrite=overwrite, expected_bytes=tensor_bytes(prepared)) as tmp:
        if suffix == SAFETENSORS_SUFFIX:
            meta = {key: str(value) for key, value in (metadata or {}).items()}
            meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(prepared, meta)
            safetensors.torch.save_file(prepared, str(tmp), metadata=meta)
        else:
            torch.save(prepared, str(tmp))
    return target


def file_hashes(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(full SHA-256, legacy A1111 hash)`` of a model file: the ``ss_new_sd_model_hash`` /
    ``ss_sd_model_hash`` pair kohya records for the base model."""
    full = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            full.update(chunk)
        handle.seek(LEGACY_HASH_OFFSET)
        legacy = hashlib.sha256(handle.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]
    return full.hexdigest(), legacy
