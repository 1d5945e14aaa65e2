"""Training: the loop, checkpoints, schedules, cross-validation splits, logs, torchrun plumbing.

``train`` is imported lazily so that ``import seg3d.training`` stays light.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from seg3d.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'seg3d.training' has no attribute {name!r}")
