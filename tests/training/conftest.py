"""Fixtures of the trainer tests."""
from __future__ import annotations

from dataclasses import replace

import pytest


@pytest.fixture
def plan_dir(tmp_path, tiny_plan, phantom_dir):
    """A plan folder for the tiny plan, recording the session's phantom dataset."""
    d = tmp_path / "plan"
    replace(tiny_plan, extra={"dataset_dir": str(phantom_dir)}).save(d / "plans.json")
    return d
