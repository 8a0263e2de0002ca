"""What the tools print, for the tests: the fit line of ``adapt extract`` and ``adapt resize``
(read, and recomputed independently in float64 from the files), and the one-line refusal of
an adapter holding NaN/inf. No tests here."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

FIT_LINE = re.compile(
    r"fit: kept (?P<kept>[\d.]+)% of the change's Frobenius norm \(relative error (?P<error>[\d.]+)%\); "
    r"worst layer (?P<name>\S+): kept (?P<worst_kept>[\d.]+)% \(relative error (?P<worst_error>[\d.]+)%\)$"
)


@dataclass(frozen=True)
class Fit:
    kept: float
    error: float
    worst: str
    worst_kept: float
    worst_error: float


def printed_fit(stdout: str) -> Fit:
    """The fit numbers of the command's summary line, as fractions."""
    match = FIT_LINE.search(stdout.strip().splitlines()[-1])
    assert match, stdout
    number = {key: float(value) / 100 for key, value in match.groupdict().items() if key != "name"}
    return Fit(number["kept"], number["error"], match["name"], number["worst_kept"], number["worst_error"])


def recomputed_fit(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Fit:
    """The fit of ``{layer: (change, module delta)}``: errors over all layers and the worst layer."""
    norms = {name: float(change.double().norm()) for name, (change, _) in pairs.items()}
    residuals = {name: float((change.double() - fitted.double()).norm()) for name, (change, fitted) in pairs.items()}
    errors = {name: residuals[name] / norms[name] for name in pairs}
    error = (sum(r**2 for r in residuals.values()) / sum(n**2 for n in norms.values())) ** 0.5
    worst = max(errors, key=errors.__getitem__)
    return Fit((1 - error**2) ** 0.5, error, worst, (1 - errors[worst] ** 2) ** 0.5, errors[worst])


def assert_fit_matches(stdout: str, pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Fit:
    """The printed fit agrees with the recomputation to its two printed decimals (in %)."""
    shown, expected = printed_fit(stdout), recomputed_fit(pairs)
    assert shown.worst == expected.worst
    for field in ("kept", "error", "worst_kept", "worst_error"):
        assert abs(getattr(shown, field) - getattr(expected, field)) <= 6e-5, (field, shown, expected)
    return shown


def write_non_finite(path: Path, tensors: dict[str, torch.Tensor], key: str, value: float) -> Path:
    """``tensors`` with ``value`` (NaN or inf) in one entry of ``key``, written with safetensors
    itself (adapt's own writer refuses non-finite values)."""
    tensors[key].view(-1)[1] = value
    save_file(tensors, str(path))
    return path


def assert_refused_non_finite(
    adapt: Callable[..., tuple[int, str, str]], args: tuple[object, ...], broken: Path, key: str, out: Path
) -> None:
    """``adapt *args`` exits 2 with one stderr line naming the file and the module, writing nothing."""
    name, _, tensor = key.partition(".")
    code, stdout, err = adapt(*args)
    assert (code, stdout) == (2, "")
    assert err.splitlines() == [
        f"adapt: error: {broken}: module {name}: {tensor} holds NaN or infinite values; "
        "a finite adapter is needed (nothing was written)"
    ]
    assert not out.exists()
