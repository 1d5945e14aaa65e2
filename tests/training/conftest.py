"""Fixtures of the trainer tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def plan_dir(tmp_path, tiny_plan, phantom_dir):
    """A plan folder for the tiny plan, recording the session's phantom dataset."""
    d = tmp_path / "plan"
    from seg3d.core.plan_folder import PlanFolder

    tiny_plan.save(d / "plans.json")
    PlanFolder(d).record_dataset(phantom_dir)
    return d
