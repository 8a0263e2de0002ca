"""adapt's core: plugin host, model patching, block index, file format and shared tools."""

from adapters_core.plugins import get_registry, hookimpl
from adapters_core.quiet import silence_dependency_notices
from adapters_core.types import NetworkOption, NetworkType

__all__ = ["NetworkOption", "NetworkType", "get_registry", "hookimpl"]
__version__ = "0.1.0"

silence_dependency_notices()
