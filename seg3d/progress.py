"""The progress-callback convention: the library reports, the CLI draws.

A long operation takes ``progress: ProgressFn | None`` and calls ``progress(done, total, message)``.
"""
from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]


def report(progress: ProgressFn | None, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(done, total, message)
