"""The README's Python API example runs and its merged output equals the patched one."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


def test_python_api_example(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = dict(line.rsplit(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    half, full = float(lines["mean |change| at multiplier 0.5"]), float(lines["mean |change| at multiplier 1.0"])
    assert 0 < half < full < float(lines["mean |change| with two networks"])
    assert float(lines["max |merged - patched|"]) < 1e-4
