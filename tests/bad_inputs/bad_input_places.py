"""The places a bad-input case may write to besides its own folder: a read-only folder and a
nearly full file system (tiny tmpfs mounts where the machine allows them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FULL_DISK_FREE_BYTES = 4096  # what the nearly full file system has left for the command


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir()
    if shutil.which("mount") is None:
        return False
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    done = subprocess.run(command, capture_output=True, check=False)
    return done.returncode == 0


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nothing can be written to: a read-only tmpfs, else a folder without write permission."""
    if _mount_tmpfs(folder, "ro,size=64k"):
        try:
            yield folder
        finally:
            _unmount(folder)
        return
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions, and no mount was allowed
        folder.chmod(0o755)
        pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        yield folder
    finally:
        folder.chmod(0o755)


@contextlib.contextmanager
def full_folder(folder: Path) -> Iterator[Path]:
    """A folder on a 1 MiB tmpfs filled to :data:`FULL_DISK_FREE_BYTES` free."""
    if not _mount_tmpfs(folder, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is not checked")
    try:
        free = shutil.disk_usage(folder).free
        (folder / "filler").write_bytes(b"\0" * max(0, free - FULL_DISK_FREE_BYTES))
        yield folder
    finally:
        _unmount(folder)
