"""Write files and folders atomically: to a temporary name beside the target, then rename.

The rules every output of adapt follows:

- Nothing is created before the first real byte is written: missing parent folders are made
  by :func:`atomic_path` when it starts, and removed again when the write fails.
- Publishing is one step. Without ``overwrite`` the temporary is renamed in with a rename that
  refuses to replace (Linux ``renameat2(RENAME_NOREPLACE)``; a hard link for files where that
  is missing), so of several runs writing one output exactly one wins. With ``overwrite`` a
  file is replaced by ``os.replace``; a folder is renamed aside, the new one renamed in, then
  the old one deleted, so a kill at any moment leaves the old or the new output, never neither.
- Temporaries carry the writer's process id; a later write to the same place removes those
  of processes that no longer run (and puts back a folder a killed replace had set aside).
- Outputs get the permissions the user's umask gives a new file, not ``mkstemp``'s 0600.
- A full disk, a read-only or missing folder becomes one :class:`OutputError` line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from adapters_core.errors import (
    AdaptError,
    DiskFullError,
    OutputError,
    OutputExistsError,
)

_FULL_DISK_MARKERS = ("No space left", "StorageFull", "os error 28", "code: 28", "file write failed")
_NEARLY_FULL_BYTES = 1 << 20


def _noreplace_rename_function() -> object | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:  # no C library to load (not Linux)
        return None


_RENAMEAT2 = _noreplace_rename_function()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - the loop always returns


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``, and a place no file can be written to.

    Creates nothing: callers check every output before any work starts.
    """
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{target}: output exists; pass --overwrite to replace it")
    ancestor = _existing_ancestor(target.parent.absolute())
    if not ancestor.is_dir():
        raise OutputError(f"{target}: {ancestor} is a file, not a folder; choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: folder {ancestor} is not writable (read-only file system or permissions)")
    return target


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            created.mkdir()
    return missing


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _leftovers(target: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]+\.(tmp|old)$")


def remove_stale_temporaries(target: Path) -> None:
    """Remove the temporaries of killed writers of ``target``; restore a folder set aside."""
    folder = target.parent
    if not folder.is_dir():
        return
    pattern = _leftovers(target)
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not (target.exists() or target.is_symlink()):
            with contextlib.suppress(OSError):
                os.rename(entry, target)
                continue
        _remove(entry)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` in one step that fails with ``FileExistsError`` if
    ``target`` exists (files and folders)."""
    if _RENAMEAT2 is not None:
        result = _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)  # type: ignore[operator]
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(target))
    if source.is_dir():
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(source, target)  # an existing non-empty folder makes this fail too
    else:
        os.link(source, target)  # refuses an existing target
        os.unlink(source)


def _replace(source: Path, target: Path) -> None:
    """Replace ``target`` by ``source``; a folder is renamed aside first, deleted last."""
    if not (target.is_dir() and not target.is_symlink()) and not source.is_dir():
        os.replace(source, target)
        return
    aside = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
    os.rename(target, aside)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove(aside)


def _publish(source: Path, target: Path, overwrite: bool) -> None:
    try:
        rename_noreplace(source, target)
    except FileExistsError:
        if not overwrite:
            raise OutputExistsError(
                f"{target}: output exists (another run wrote it meanwhile); pass --overwrite to replace it"
            ) from None
        _replace(source, target)


def _apply_umask(path: Path) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def _is_disk_full(error: BaseException, folder: Path) -> bool:
    if getattr(error, "errno", None) == errno.ENOSPC:
        return True
    if not isinstance(error, (OSError, RuntimeError)) and type(error).__name__ != "SafetensorError":
        return False
    if any(marker in str(error) for marker in _FULL_DISK_MARKERS):
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(_existing_ancestor(folder)).free
    except OSError:
        return 0


def disk_full_error(target: Path, needed: int | None, written: int = 0) -> DiskFullError:
    free = _free_bytes(target.parent)
    if needed:
        need = f"needs about {human_bytes(needed)}"
    else:
        need = f"needs more than the {human_bytes(written)} written before the disk filled"
    return DiskFullError(f"{target}: no space left on the device: the output {need}, {human_bytes(free)} is free")


def _write_error(error: BaseException, target: Path, temporary: Path) -> AdaptError | None:
    """The one-line error for a failed write, or ``None`` when the error is not about writing."""
    if isinstance(error, AdaptError) or not isinstance(error, OSError):
        return None
    filename = str(getattr(error, "filename", "") or "")
    if filename and not (filename.startswith(str(temporary)) or filename.startswith(str(target.parent))):
        return None
    reason = error.strerror or str(error)
    return OutputError(f"{target}: cannot write: {reason}")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], overwrite: bool = False, *, expected_bytes: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is published at ``path``.

    Works for files and for folders (a Diffusers model folder written with
    ``save_pretrained``): whatever the body creates at the temporary path is moved into place.
    ``expected_bytes``, when known, is checked against the free space before anything is written.
    On any error the temporary and the parent folders made for it are removed.
    """
    target = check_writable(path, overwrite)
    remove_stale_temporaries(target)
    if expected_bytes and _free_bytes(target.parent) < expected_bytes:
        raise disk_full_error(target, expected_bytes)
    temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    created: list[Path] = []
    try:
        created = _make_parents(target.parent)
        yield temporary
        if not (temporary.exists() or temporary.is_symlink()):
            raise OutputError(f"{target}: nothing was written")
        _apply_umask(temporary)
        _publish(temporary, target, overwrite)
    except BaseException as error:
        written = _size(temporary)
        _remove(temporary)
        _remove_empty(created)
        if _is_disk_full(error, target.parent):
            raise disk_full_error(target, expected_bytes, written) from None
        replacement = _write_error(error, target, temporary)
        if replacement is not None:
            raise replacement from None
        raise
