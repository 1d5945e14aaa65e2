"""seg3d: self-configuring 3D medical image segmentation.

The public API, imported lazily so that ``import seg3d`` stays fast::

    from seg3d import plan_dataset, train, Predictor, predict_folder, evaluate_folder
    from seg3d import TrainSettings, PredictSettings, ModelFolder
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "plan_dataset": "seg3d.planning",
    "train": "seg3d.training",
    "Predictor": "seg3d.inference",
    "predict_folder": "seg3d.runners.local",
    "TrainSettings": "seg3d.core.settings",
    "PredictSettings": "seg3d.core.settings",
    "ModelFolder": "seg3d.core.model_folder",
    "evaluate_folder": "seg3d.evaluation",
    "check_dataset": "seg3d.io.checks",
    "load_dataset": "seg3d.io.layout",
    "make_phantom_dataset": "seg3d.synthetic",
    "Plan": "seg3d.core.plan",
    "Seg3dError": "seg3d.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seg3d' has no attribute {name!r}")
