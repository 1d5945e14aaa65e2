"""Fixtures of the distillation tests: a tiny 2-fold teacher trained on the session's phantom dataset."""
from __future__ import annotations

import pytest

QUIET = {"log": lambda s: None}


def _root_conftest():
    """tests/conftest.py as a module (``import conftest`` here would find this file)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("seg3d_tests_root_conftest",
                                                  Path(__file__).resolve().parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_teacher(root, phantom_dir, epochs: int, iters: int, folds=(0, 1)):
    """A plan folder and a teacher model folder (``folds`` trained, fp32, no end-of-fold validation)."""
    from seg3d.training import train

    make_tiny_plan = _root_conftest().make_tiny_plan

    from seg3d.core.plan_folder import PlanFolder

    plan_dir = root / "plan"
    make_tiny_plan().save(plan_dir / "plans.json")
    PlanFolder(plan_dir).record_dataset(phantom_dir)
    teacher = root / "teacher"
    for f in folds:
        train(plan_dir, fold=f, model_dir=teacher, epochs=epochs, iters_per_epoch=iters, device="cpu",
              precision="fp32", workers=0, val_batches=1, optimizer="adamw", lr=1e-2, augmentation="light",
              validate=False, **QUIET)
    return plan_dir, teacher


@pytest.fixture(scope="session")
def small_teacher(tmp_path_factory, phantom_dir):
    """A barely trained 2-fold teacher (quality irrelevant: for the plumbing tests)."""
    return train_teacher(tmp_path_factory.mktemp("teacher"), phantom_dir, epochs=2, iters=3)[1]


@pytest.fixture
def make_teacher():
    """``make_teacher(root, phantom_dir, epochs, iters)`` -> (plan folder, teacher model folder)."""
    return train_teacher
