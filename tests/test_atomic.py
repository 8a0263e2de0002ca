"""The one writer every output goes through: exactly one of several writers wins, replacing is
atomic, killed writers' temporaries are cleaned up, outputs get the umask's permissions."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from adapters_core import atomic
from adapters_core.atomic import atomic_path, check_writable
from adapters_core.errors import OutputError, OutputExistsError


def _write_after_barrier(target: str, barrier: multiprocessing.synchronize.Barrier, name: str, queue) -> None:
    try:
        with atomic_path(target) as tmp:
            Path(tmp).write_text(name)
            barrier.wait(timeout=30)  # every writer has its temporary ready before any publishes
        queue.put((name, "ok"))
    except OutputExistsError as error:
        queue.put((name, f"exists: {error}"))


def test_of_four_writers_exactly_one_wins(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    queue = context.Queue()
    workers = [
        context.Process(target=_write_after_barrier, args=(str(target), barrier, f"w{i}", queue)) for i in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    results = dict(queue.get(timeout=5) for _ in workers)
    winners = [name for name, result in results.items() if result == "ok"]
    assert len(winners) == 1, results
    assert target.read_text() == winners[0]
    assert all("another run wrote it meanwhile" in r for n, r in results.items() if n not in winners)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]  # no temporaries left


def test_overwriting_a_folder_keeps_the_old_one_until_the_new_one_is_in(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def failing_second_rename(source, destination):
        calls.append((str(source), str(destination)))
        if len(calls) == 2:  # the old folder is aside, the new one is about to go in: "killed" here
            raise OSError(5, "Input/output error", str(destination))
        return real_rename(source, destination)

    monkeypatch.setattr(atomic.os, "rename", failing_second_rename)
    with pytest.raises(OutputError), atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]  # the old folder was put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_path(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _dead_pid() -> int:
    context = multiprocessing.get_context("fork")
    process = context.Process(target=lambda: None)
    process.start()
    process.join()
    assert process.pid is not None
    return process.pid


def test_a_killed_writers_temporaries_are_removed_and_a_folder_set_aside_is_restored(tmp_path: Path) -> None:
    pid = _dead_pid()
    stale_file = tmp_path / f".out.safetensors.{pid}.0a1b2c3d.tmp"
    stale_file.write_bytes(b"partial")
    live_file = tmp_path / f".out.safetensors.{os.getppid()}.0a1b2c3d.tmp"  # a running writer's: kept
    live_file.write_bytes(b"in progress")
    with atomic_path(tmp_path / "out.safetensors") as tmp:
        tmp.write_bytes(b"done")
    assert not stale_file.exists() and live_file.exists()
    # a replace killed between "old aside" and "new in": the next writer puts the old folder back first
    aside = tmp_path / f".model.{pid}.0a1b2c3d.old"
    aside.mkdir()
    (aside / "weights").write_text("old")
    with pytest.raises(OutputExistsError):
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
    assert (tmp_path / "model" / "weights").read_text() == "old" and not aside.exists()


def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.safetensors") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "folder") as tmp:
            tmp.mkdir()
        os.umask(0o027)
        with atomic_path(tmp_path / "b.safetensors") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o640


def test_nothing_is_created_before_the_write_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "out.safetensors"
    check_writable(target, overwrite=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the body failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "afile" / "out.safetensors", overwrite=False)


def test_a_full_disk_is_one_line_naming_the_path_and_the_space(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk case is not exercised")
    try:
        with pytest.raises(OutputError) as caught, atomic_path(mount / "big.bin") as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"\0" * 1_000_000)
        message = str(caught.value)
        assert "big.bin: no space left on the device" in message and "free" in message
        assert "\n" not in message
        assert list(mount.iterdir()) == []
        with pytest.raises(OutputError, match=r"needs about 9\.5 MiB"):
            with atomic_path(mount / "big.bin", expected_bytes=10_000_000):
                pass
    finally:
        os.system(f"umount {mount}")
