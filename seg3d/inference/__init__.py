"""Inference: the Predictor, the sliding window (TTA, folds), network calls and backends, the batch stages.

Imported lazily so that ``from seg3d.inference import sliding_window_predict`` does not pull in the
predictor's model loading. Batch runners over the stages live in :mod:`seg3d.runners`.
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "sliding_window_predict": "seg3d.inference.sliding_window",
    "gaussian_importance": "seg3d.inference.sliding_window",
    "Predictor": "seg3d.inference.predictor",
    "Prediction": "seg3d.inference.predictor",
    "NetworkCall": "seg3d.inference.network_call",
    "TorchNetwork": "seg3d.inference.network_call",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seg3d.inference' has no attribute {name!r}")
