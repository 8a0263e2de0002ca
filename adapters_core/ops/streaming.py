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
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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


def spec_bytes(spec: TensorSpec) -> int:
    """How many bytes the tensor ``spec`` describes takes in a file."""
    _, dtype, shape = spec
    return shape.numel() * dtype.itemsize


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


@dataclass
class _Pending:
    """One queued tensor: its bytes, or the file span holding them; ``size`` is the memory it holds."""

    key: str
    data: torch.Tensor | tuple[Path, int, int]
    size: int = 0
    check: Callable[[torch.Tensor], None] | None = None


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, laid out in the order of ``specs``.

    The header is written first and each tensor goes to its own offset, so tensors may come
    in any order (each key once). The bytes go out on a background thread (file writes
    release the GIL) while the caller computes the next tensor. The thread writes queued
    tensors first, which hold at most ``queue_bytes`` (one larger tensor waits alone), and
    copies of another file's bytes (``copy``: no memory held, the caller never waits) while
    no tensor is waiting: queue every copy before computing, and the kernel copies the
    unchanged tensors during the computing. ``after_write(key)`` runs on that thread once a
    tensor is written.
    """

    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        after_write: Callable[[str], None] | None = None,
        queue_bytes: int = 128 << 20,
    ) -> None:
        header: dict[str, object] = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
        offsets: dict[str, int] = {}
        offset = 0
        for spec in specs:
            key, dtype, shape = spec
            size = spec_bytes(spec)
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offsets[key] = offset
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        data_start = 8 + len(encoded)
        self._specs = {key: (dtype, shape) for key, dtype, shape in specs}
        self._offsets = {key: data_start + at for key, at in offsets.items()}  # where each tensor's bytes go
        self._claimed: set[str] = set()  # keys queued so far
        self._after_write = after_write
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._pwrite(struct.pack("<Q", len(encoded)) + encoded, 0)
        os.ftruncate(self._fd, data_start + offset)
        self._tensors: deque[_Pending] = deque()
        self._copies: deque[_Pending] = deque()
        self._closed = False
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._sources: dict[Path, int] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()

    def _next_item(self) -> _Pending | None:
        with self._room:
            self._room.wait_for(lambda: self._tensors or self._copies or self._closed)
            if self._tensors:
                return self._tensors.popleft()
            return self._copies.popleft() if self._copies else None

    def _drain(self) -> None:
        while (item := self._next_item()) is not None:
            try:
                if self._error is not None:
                    continue  # keep taking items so that write() never blocks
                if isinstance(item.data, tuple):
                    self._copy_span(*item.data, self._offsets[item.key])
                else:
                    if item.check is not None:
                        item.check(item.data)
                    data = item.data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                    self._pwrite(data.data, self._offsets[item.key])
                if self._after_write is not None:
                    self._after_write(item.key)
            except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread
                self._error = error
            finally:
                with self._room:
                    self._queued_bytes -= item.size
                    self._room.notify_all()

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _copy_span(self, path: Path, start: int, stop: int, offset: int) -> None:
        """Bytes of another file, copied by the kernel (``copy_file_range``: no pass through
        this process's memory); read and written where the file system cannot."""
        if path not in self._sources:
            self._sources[path] = os.open(path, os.O_RDONLY)
        source = self._sources[path]
        position = start
        try:
            while position < stop:
                copied = os.copy_file_range(
                    source, self._fd, stop - position, offset_src=position, offset_dst=offset + position - start
                )
                if copied == 0:
                    break
                position += copied
        except OSError:
            pass  # EXDEV, ENOSYS, ...: the rest goes through memory below
        while position < stop:
            chunk = os.pread(source, min(stop - position, 64 << 20), position)
            if not chunk:
                raise FormatError(f"{path}: truncated file (a tensor ends past the end)")
            self._pwrite(chunk, offset + position - start)
            position += len(chunk)

    def write(self, key: str, tensor: torch.Tensor, check: Callable[[torch.Tensor], None] | None = None) -> None:
        """Queue ``tensor`` (in the dtype and shape the header declared for ``key``).

        ``check(tensor)``, if given, runs on the writer's thread before the bytes go out (a
        NaN/inf test then overlaps the caller's next tensor); what it raises stops the writing
        and is raised on the caller's thread at its next call or on leaving the ``with``.
        """
        self._claim(key, tensor.dtype, tensor.shape)
        size = tensor.nbytes
        with self._room:
            self._room.wait_for(lambda: self._queued_bytes == 0 or self._queued_bytes + size <= self._queue_bytes)
            self._queued_bytes += size
            self._tensors.append(_Pending(key, tensor, size, check))
            self._room.notify_all()

    def copy(self, key: str, reader: CheckpointReader) -> bool:
        """Queue ``key``'s bytes as ``reader``'s file stores them, unchanged; ``False`` (nothing
        queued) when they do not lie in one file."""
        span = reader.file_span(key)
        if span is None:
            return False
        self._claim(key, reader.dtype(key), reader.shape(key))
        with self._room:
            self._copies.append(_Pending(key, span))
            self._room.notify_all()
        return True

    def _claim(self, key: str, dtype: torch.dtype, shape: torch.Size) -> None:
        if self._error is not None:
            raise self._error
        if key not in self._specs or key in self._claimed:
            raise ValueError(f"{key}: {'written twice' if key in self._claimed else 'not in the header'}")
        expected_dtype, expected_shape = self._specs[key]
        if dtype != expected_dtype or shape != expected_shape:
            raise ValueError(f"{key} {dtype} {tuple(shape)}: expected {expected_dtype} {tuple(expected_shape)}")
        self._claimed.add(key)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._room:
            self._closed = True
            if error is not None and self._error is None:
                self._error = error  # the caller failed (or was interrupted): what is queued is not written
            self._room.notify_all()
        self._thread.join()
        os.close(self._fd)
        for source in self._sources.values():
            os.close(source)
        if kind is None and self._error is not None:
            raise self._error
        if kind is None and len(self._claimed) != len(self._specs):
            raise ValueError(f"only {len(self._claimed)} of {len(self._specs)} tensors were written")
