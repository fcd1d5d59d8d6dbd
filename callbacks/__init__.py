"""Lightning callbacks: thin glue that schedules an analysis from ``zfexp`` and logs its result."""

from callbacks.checkpoint import CrashSafeCheckpoint
from callbacks.filter_renorm import FilterRenorm

__all__ = ["CrashSafeCheckpoint", "FilterRenorm"]
