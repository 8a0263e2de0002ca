"""Write files atomically: to a temporary name beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapters_core.errors import OutputExistsError


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; create the parent folder."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: output exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``path``, on error removed.

    Works for files and for folders (a Diffusers model folder written with
    ``save_pretrained``): whatever the body creates at the temporary path is moved into place.
    """
    target = check_writable(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
