"""What adapt prints: its own bars, log lines and summary; dependencies' notices only with --verbose.

:func:`silence_dependency_notices` runs when ``adapters_core`` is imported, so Python API users
do not see transformers' notice about torchvision (adapt never uses its image processors).
:func:`set_verbosity` is the CLI's ``--quiet``/``--verbose``: quiet leaves errors and the final
summary (stdout); normal adds adapt's progress bars and log lines; verbose adds the
dependencies' log lines, progress bars and warnings.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from tqdm import tqdm

DEPENDENCY_LOGGERS = ("diffusers", "transformers", "accelerate", "httpx", "huggingface_hub", "PIL", "matplotlib", "torch")
_TORCHVISION_NOTICE = "requires torchvision (not installed)"


class _BarSafeHandler(logging.StreamHandler):
    """Log lines printed above adapt's progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_NOTICE not in record.getMessage()


def silence_dependency_notices() -> None:
    """Drop transformers' "requires torchvision" notice (the only one a normal import prints)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_DropTorchvisionNotice())


_verbose_libraries = False


def set_verbosity(level: str) -> None:
    """``quiet``, ``normal`` or ``verbose`` (see the module docstring).

    Imports no library: transformers and diffusers read their log level from the environment
    when they are imported, and :func:`apply_library_verbosity` (called before any model is
    loaded) sets their progress bars, so that ``--help``, argument errors and the tools that
    need neither library stay instant.
    """
    global _verbose_libraries
    from adapters_core.progress import set_progress_bars

    verbose = level == "verbose"
    _verbose_libraries = verbose
    adapt_level = {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}[level]
    handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=adapt_level, handlers=[handler], force=True)
    for name in DEPENDENCY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if verbose else "1"
    for library in ("TRANSFORMERS", "DIFFUSERS"):  # read when the library is imported
        os.environ[f"{library}_VERBOSITY"] = "info" if verbose else "error"
    set_progress_bars(level != "quiet")
    if not verbose:
        warnings.filterwarnings("ignore")  # dependencies' deprecation and user warnings
    if "transformers" in sys.modules or "diffusers" in sys.modules:
        apply_library_verbosity()


def apply_library_verbosity() -> None:
    """transformers' and diffusers' own log levels and progress bars, as :func:`set_verbosity` chose."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = logging.INFO if _verbose_libraries else logging.ERROR
    transformers_logging.set_verbosity(level)
    diffusers_logging.set_verbosity(level)
    for module in (transformers_logging, diffusers_logging):
        (module.enable_progress_bar if _verbose_libraries else module.disable_progress_bar)()
