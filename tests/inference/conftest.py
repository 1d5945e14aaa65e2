"""A tiny model folder built in the test: the plan, model.json and randomly initialised fold checkpoints."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from inference_helpers import make_model_dir


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_plan) -> Path:
    return make_model_dir(tmp_path / "model", tiny_plan, folds=(0, 1))


@pytest.fixture
def two_channel_plan(tiny_plan):
    from seg3d.core.plan import ChannelNormalization

    return replace(tiny_plan, channel_names=("T1", "T2"),
                   normalization=(ChannelNormalization("T1", "zscore"), ChannelNormalization("T2", "zscore")))
