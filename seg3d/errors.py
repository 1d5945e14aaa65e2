"""One exception type for everything a user can cause.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class Seg3dError(Exception):
    """A problem with the user's input (a file, a plan, an option), stated so the user can fix it."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
