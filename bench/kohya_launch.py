"""Run one of kohya sd-scripts' scripts inside the kohya virtual environment (bench/kohya_env.py).

    <kohya venv>/bin/python bench/kohya_launch.py <sd-scripts>/networks/merge_lora.py [args...]

The torchvision wheel on PyPI is built against CUDA torch; with the CPU torch of the bench's
venv its compiled operators (nms, roi_align, ...) cannot load, and registering their fake
kernels fails at ``import torchvision``. kohya's scripts import torchvision only for
``transforms`` and call none of those operators, so their registration is skipped here;
everything else runs unchanged, as ``python <script> [args...]`` would.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def import_torchvision_without_compiled_ops() -> None:
    register_fake = torch.library.register_fake

    def tolerant(op: Any, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            try:
                return register_fake(op, *args, **kwargs)(function)
            except RuntimeError:  # the operator's library did not load
                return function

        return register

    torch.library.register_fake = tolerant
    try:
        import torchvision.transforms  # noqa: F401
    finally:
        torch.library.register_fake = register_fake


def main() -> None:
    import_torchvision_without_compiled_ops()
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))  # as `python networks/x.py` does: `import lora` works
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
