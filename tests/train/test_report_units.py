"""The training report's pure parts: smoothing and planned outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters_core.train.report import TrainingReport, moving_average


def test_moving_average_is_the_mean_of_the_last_window_values() -> None:
    assert moving_average([4.0, 2.0, 6.0, 0.0, 10.0], 2) == [4.0, 3.0, 4.0, 3.0, 5.0]
    assert moving_average([1.0, 3.0], 5) == [1.0, 2.0]
    assert moving_average([], 3) == []


@pytest.mark.parametrize(
    ("prompts", "enabled", "expected"),
    [(["a"], True, ["n_samples.png", "n_loss.png"]), ([], True, ["n_loss.png"]), (["a"], False, [])],
)
def test_planned_outputs(prompts: list[str], enabled: bool, expected: list[str], tmp_path: Path) -> None:
    report = TrainingReport(tmp_path, "n", prompts, enabled=enabled)
    assert [p.name for p in report.outputs()] == expected
    assert report.finish() == []  # nothing recorded: nothing written
    assert list(tmp_path.iterdir()) == []
