"""How the library reports: progress callbacks and log lines, one path each; the CLI draws them.

A long operation takes ``progress: ProgressFn | None`` and calls ``progress(done, total, message)``.
Log lines (``log: LogFn``, default :func:`log_info`) go to the ``seg3d`` logger: INFO for progress lines,
WARNING for lines starting with ``warning:``. Python warnings the library raises (``warnings.warn``) stay
warnings; the CLI routes both into one handler (``logging.captureWarnings``), so every line a user sees comes
through the same place. A Python user sees them with ``logging.basicConfig(level=logging.INFO)``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]
LogFn = Callable[[str], None]
LOGGER = logging.getLogger("seg3d")


def report(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(done, total, message)


def log_info(message: str) -> None:
    """The default ``log``: the ``seg3d`` logger (WARNING for ``warning: ...`` lines, else INFO)."""
    LOGGER.log(logging.WARNING if message.startswith("warning:") else logging.INFO, message)
