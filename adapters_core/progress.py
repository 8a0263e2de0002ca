"""adapt's progress bars: one per long phase, with rate and ETA, on stderr; off with ``--quiet``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_enabled = True


def set_progress_bars(enabled: bool) -> None:
    """Show (default) or hide every bar adapt draws from now on."""
    global _enabled
    _enabled = enabled


def progress_bar(total: int | None, description: str, unit: str = "module", *, disable: bool = False, **kwargs) -> tqdm:
    """A bar to advance by hand (``with progress_bar(n, "...") as bar: bar.update()``)."""
    return tqdm(
        total=total, desc=description, unit=unit, dynamic_ncols=True, mininterval=0.5,
        disable=disable or not _enabled, **kwargs,
    )


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "module") -> Iterator[T]:
    """``items`` with a bar over them."""
    return iter(progress_bar(total, description, unit, iterable=items))
