"""Whole-model checkpoints one tensor at a time, so a merge holds one model, not two.

:class:`SafetensorsReader` maps the file copy-on-write and hands out tensors that view the
page cache (no copy); :meth:`CheckpointReader.release` drops a tensor's pages from the
process once it is written, so resident memory holds the tensors in flight, not the file.
:class:`SafetensorsWriter` declares every tensor's dtype and shape in the header first,
then streams the bytes in that order. Pickled checkpoints are memory-mapped by
``torch.load(mmap=True)`` where their format allows.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from adapters_core.errors import FormatError, ModelLoadError
from adapters_core.formats import is_safetensors, pickled_tensors, weights_header

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
TensorSpec = tuple[str, torch.dtype, torch.Size]
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


@contextlib.contextmanager
def reused_heap(threshold: int = 1 << 30) -> Iterator[None]:
    """Let the allocator hand freed tensors back to the next ones instead of fresh pages.

    glibc maps every block over 32 MB (and, at first, over 128 KB) straight from the kernel
    and unmaps it on free, so each new tensor of a merge faults in and zeroes its pages: on
    SD-sized layers that costs several times the arithmetic. Raising the mmap and trim
    thresholds keeps freed blocks in the heap for reuse; on exit they are restored and the
    heap is trimmed. The values computed are unchanged. A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, threshold)
    mallopt(_M_TRIM_THRESHOLD, threshold)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        malloc_trim(0)


class CheckpointReader(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors, read on access; ``shape``/``dtype`` without reading."""

    metadata: dict[str, str]

    def shape(self, key: str) -> torch.Size:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError

    def release(self, key: str) -> None:
        """Drop the memory behind ``key``'s tensor (it is read again if used again)."""

    def file_span(self, key: str) -> tuple[Path, int, int] | None:
        """The file and byte range holding ``key``'s tensor as stored, if it lies in one."""
        return None

    def close(self) -> None:
        """Release the file."""


class SafetensorsReader(CheckpointReader):
    def __init__(self, path: Path) -> None:
        header = weights_header(path)
        meta = header.pop("__metadata__", {})
        self.metadata = dict(meta) if isinstance(meta, dict) else {}
        self.path = path
        self._entries: dict[str, dict[str, object]] = {}
        for key, entry in header.items():
            if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise FormatError(f"{path}: tensor {key} has an unsupported safetensors entry {entry}")
            self._entries[key] = entry
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            self._data_start = 8 + length
            # copy-on-write: torch gets a writable buffer, the file is never modified
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if path.stat().st_size else None

    def _span(self, key: str) -> tuple[int, int]:
        offsets = self._entries[key]["data_offsets"]
        assert isinstance(offsets, list)
        start, stop = self._data_start + int(offsets[0]), self._data_start + int(offsets[1])
        if self._map is None or stop > len(self._map):
            raise FormatError(f"{self.path}: truncated file (tensor {key} ends past the end)")
        return start, stop

    def __getitem__(self, key: str) -> torch.Tensor:
        start, stop = self._span(key)
        if stop == start:
            return torch.empty(self.shape(key), dtype=self.dtype(key))
        data = torch.frombuffer(self._map, dtype=torch.uint8, count=stop - start, offset=start)
        return data.view(self.dtype(key)).reshape(self.shape(key))

    def file_span(self, key: str) -> tuple[Path, int, int]:
        return (self.path, *self._span(key))

    def release(self, key: str) -> None:
        start, stop = self._span(key)
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # only whole pages inside the tensor
        last = stop // mmap.PAGESIZE * mmap.PAGESIZE
        if self._map is not None and last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, key: str) -> torch.Size:
        return torch.Size(self._entries[key]["shape"])  # type: ignore[arg-type]

    def dtype(self, key: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[str(self._entries[key]["dtype"])]

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a tensor still views the map: the GC closes it with the last one
                pass


class ShardedReader(CheckpointReader):
    """The shards of one sharded safetensors checkpoint (an ``*.index.json`` beside them) as one reader."""

    def __init__(self, shards: Sequence[SafetensorsReader]) -> None:
        self._shards = list(shards)
        self._owner = {key: shard for shard in self._shards for key in shard}
        self.metadata = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._owner[key][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)

    def shape(self, key: str) -> torch.Size:
        return self._owner[key].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._owner[key].dtype(key)

    def release(self, key: str) -> None:
        self._owner[key].release(key)

    def file_span(self, key: str) -> tuple[Path, int, int]:
        return self._owner[key].file_span(key)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


class TensorDictReader(CheckpointReader):
    """A pickled checkpoint (memory-mapped when possible) behind the reader interface."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors
        self.metadata = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def shape(self, key: str) -> torch.Size:
        return self._tensors[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype


def open_checkpoint(path: str | os.PathLike[str]) -> CheckpointReader:
    """A lazy reader of a ``.safetensors`` or pickled (``.ckpt``/``.pt``/``.pth``) checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if is_safetensors(path, "checkpoint format"):
        return SafetensorsReader(path)
    return TensorDictReader(pickled_tensors(path, mmap=True))


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order of ``specs``.

    The bytes go out on a background thread (file writes release the GIL), so the caller
    computes the next tensor while the previous one is written; at most ``queue_size``
    tensors wait. ``after_write(key)`` runs on that thread once a tensor is written.
    """

    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        after_write: Callable[[str], None] | None = None,
        queue_size: int = 2,
    ) -> None:
        header: dict[str, object] = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
        offset = 0
        for key, dtype, shape in specs:
            size = shape.numel() * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._specs = list(specs)
        self._next = 0
        self._after_write = after_write
        self._handle: BinaryIO = path.open("wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._pending: queue.Queue[tuple[str, torch.Tensor | tuple[Path, int, int]] | None] = queue.Queue(
            maxsize=queue_size
        )
        self._sources: dict[Path, BinaryIO] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._pending.get()) is not None:
            if self._error is not None:
                continue  # keep taking items so that write() never blocks
            key, tensor = item
            try:
                if isinstance(tensor, tuple):
                    self._copy_span(*tensor)
                else:
                    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                    self._handle.write(data.data)
                if self._after_write is not None:
                    self._after_write(key)
            except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
                self._error = error

    def _copy_span(self, path: Path, start: int, stop: int) -> None:
        """Bytes of another file, copied by the kernel (``copy_file_range``: no pass through
        this process's memory); read and written where the file system cannot."""
        if path not in self._sources:
            self._sources[path] = path.open("rb")
        source = self._sources[path].fileno()
        self._handle.flush()
        target = self._handle.fileno()
        offset = start
        try:
            while offset < stop:
                copied = os.copy_file_range(source, target, stop - offset, offset_src=offset)
                if copied == 0:
                    break
                offset += copied
        except OSError:
            pass  # EXDEV, ENOSYS, ...: the rest goes through memory below
        while offset < stop:
            chunk = os.pread(source, min(stop - offset, 64 << 20), offset)
            if not chunk:
                raise FormatError(f"{path}: truncated file (a tensor ends past the end)")
            self._handle.write(chunk)
            offset += len(chunk)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` (in the dtype and shape the header declared for ``key``)."""
        self._check(key, tensor.dtype, tensor.shape)
        self._pending.put((key, tensor))
        self._next += 1

    def copy(self, key: str, reader: CheckpointReader) -> bool:
        """Queue ``key``'s bytes as ``reader``'s file stores them, unchanged; ``False`` (nothing
        queued) when they do not lie in one file."""
        span = reader.file_span(key)
        if span is None:
            return False
        self._check(key, reader.dtype(key), reader.shape(key))
        self._pending.put((key, span))
        self._next += 1
        return True

    def _check(self, key: str, dtype: torch.dtype, shape: torch.Size) -> None:
        if self._error is not None:
            raise self._error
        expected_key, expected_dtype, expected_shape = self._specs[self._next]
        if key != expected_key or dtype != expected_dtype or shape != expected_shape:
            raise ValueError(
                f"{key} {dtype} {tuple(shape)}: expected {expected_key} {expected_dtype} {tuple(expected_shape)}"
            )

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._pending.put(None)
        self._thread.join()
        self._handle.close()
        for source in self._sources.values():
            source.close()
        if kind is None and self._error is not None:
            raise self._error
        if kind is None and self._next != len(self._specs):
            raise ValueError(f"only {self._next} of {len(self._specs)} tensors were written")
