"""Inference: sliding window x mirroring x folds, export to the input's exact geometry, batch folders.

Imported lazily so that ``from seg3d.inference import sliding_window_predict`` does not pull in the batch
runner (and the trainer does not pull in file I/O it does not need).
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "sliding_window_predict": "seg3d.inference.sliding_window",
    "gaussian_importance": "seg3d.inference.sliding_window",
    "Predictor": "seg3d.inference.predictor",
    "predict_folder": "seg3d.inference.batch",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seg3d.inference' has no attribute {name!r}")
