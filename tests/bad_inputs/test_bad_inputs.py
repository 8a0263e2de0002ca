"""Every command given bad input answers with its exit code and one stderr line, and leaves
the file system as it found it: no output, no temporary, no touched input, no code run from a
pickle. The cases are in bad_input_cases.py; one in-process ``main()`` call each."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest
from bad_input_cases import CASES
from bad_input_places import full_folder, read_only_folder
from bad_input_table import Case, Inputs, Where

from adapt_cli.main import main

Snapshot = dict[str, tuple[int, int] | None]

# What the work itself prints: adapt's progress bars (tqdm frames, one per "\r") and log lines.
# Allowed only where the work itself shows the fault (a full disk, a result that overflows);
# every other bad input must be refused before the work starts, in one line.
WORK_OUTPUT = re.compile(
    r"^(INFO: |WARNING: |(merging|merging adapters|svd-merge|resizing|inspecting|extracting|splitting DyLoRA|generating"
    r"|steps|caching latents): +\d+%\|.*\| *[\d.]+[kMGT]?/[\d.]+[kMGT]? \[)"  # counts, or bytes (3.41M)
)


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root``: files with (size, mtime), folders by name only (a temporary
    created and removed again changes a folder's mtime, not its contents)."""
    found: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = None
        for name in files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def _param(case: Case | object) -> object:
    return pytest.param(case, id=case.id) if isinstance(case, Case) else case


def _case(entry: object) -> Case:
    return entry if isinstance(entry, Case) else entry.values[0]  # type: ignore[attr-defined]


def test_the_table_is_large_and_names_are_unique() -> None:
    ids = [_case(entry).id for entry in CASES]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)


def run_case(case: Case, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = Where(inputs.root, tmp_path)
    with contextlib.ExitStack() as places:
        if case.place == "ro":
            places.enter_context(read_only_folder(where.ro))
        elif case.place == "full":
            places.enter_context(full_folder(where.full))
        if case.setup is not None:
            case.setup(where)
        argv = [str(arg) for arg in case.argv(where)]
        before = snapshot(tmp_path), snapshot(inputs.root)
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        after = snapshot(tmp_path), snapshot(inputs.root)

    err = captured.err
    assert "Traceback" not in err + captured.out
    lines = [part for part in re.split(r"[\r\n]", err) if part.strip()]
    if case.work_output_allowed:
        lines = [line for line in lines if not WORK_OUTPUT.match(line)]
    assert code == case.code, err
    assert len(lines) == 1, err
    if case.code == 2:
        assert lines[0].startswith("adapt: error:"), err
    for needle in (case.needle,) if isinstance(case.needle, str) else case.needle:
        assert needle in lines[0]
    assert after[0] == before[0], "the case's folder changed"
    assert after[1] == before[1], "the shared inputs changed"
    assert not inputs.marker.exists(), "a pickle ran code"


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input(
    case: Case, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_case(case, inputs, tmp_path, capsys)
