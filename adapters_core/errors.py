"""Exception types of adapt.

Every error a user can cause derives from :class:`AdaptError`; its message is one line that
names the file, key or flag at fault and what was expected. The CLI prints it and exits 2.
"""

from __future__ import annotations


class AdaptError(Exception):
    """Base class of every user-facing error."""


class PluginError(AdaptError):
    """A plugin failed validation (duplicate type, bad hook signature, unknown hook)."""


class UnknownNetworkError(AdaptError):
    """A network type name that no installed plugin registers."""


class UnknownModelFamilyError(AdaptError):
    """A model family name that no installed plugin registers."""


class NetworkOptionError(AdaptError):
    """A bad ``--network_args`` value or combination."""


class BlockSpecError(NetworkOptionError):
    """A block-wise list (dims, alphas, lr weights) of the wrong length or content."""


class FormatError(AdaptError):
    """A file that is not a readable adapter or checkpoint (corrupt header, wrong format)."""


class ShapeMismatchError(AdaptError):
    """Tensors whose shapes do not fit the layer or each other (rank mismatch and the like)."""


class ModelLoadError(AdaptError):
    """A base model that cannot be loaded (missing file, unknown layout, no tokenizer)."""


class DatasetError(AdaptError):
    """A dataset problem: no images, unreadable image, bad folder name, unknown toml key."""


class ConfigError(AdaptError):
    """A bad command-line value or config-file entry."""


class OutputError(AdaptError):
    """An output that cannot be written: a read-only folder, a file where a folder is needed."""


class OutputExistsError(OutputError):
    """An output path that exists while ``--overwrite`` was not given (or that another run
    wrote while this one worked)."""


class DiskFullError(OutputError):
    """The file system ran out of space while an output was written (nothing is left behind)."""


class NonFiniteError(FormatError):
    """A tensor holding NaN or infinite values, in a file read or in a result about to be written."""


class TrainingDivergedError(AdaptError):
    """The loss became NaN or infinite."""

