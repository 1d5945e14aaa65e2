"""A run killed mid-training, for the resume tests of `seg3d train` and `seg3d distill`."""
from __future__ import annotations


class Interrupted(Exception):
    """Raised by :func:`interrupt_at`'s progress callback."""


def interrupt_at(step: int):
    """A ``progress(done, total, msg)`` callback that raises :class:`Interrupted` when ``done == step``."""
    def progress(done, total, msg):
        if done == step:
            raise Interrupted
    return progress
