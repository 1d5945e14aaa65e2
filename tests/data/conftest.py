"""An in-memory case source (anything with ``load(case_id)`` works with the sampler and loader)."""
from __future__ import annotations

import numpy as np
import pytest


class MemorySource:
    def __init__(self, cases: dict):
        self.cases = cases
        self.case_ids = list(cases)

    def load(self, case_id):
        return self.cases[case_id]


def make_case(shape, boxes, seed=0):
    """Noise image with bright labelled boxes: boxes = [(class, slices), ...]."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 0.1, size=(1, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), np.int16)
    for cls, sl in boxes:
        seg[(0, *sl)] = cls
        data[(0, *sl)] = 1.0 + cls
    fg = {c: np.argwhere(seg[0] == c) for c in range(1, int(seg.max()) + 1) if (seg == c).any()}
    return data, seg, fg


@pytest.fixture
def small_fg_source():
    """Three 3D cases whose foreground is a tiny fraction of the volume (random patches rarely hit it)."""
    cases = {}
    for i in range(3):
        cases[f"case{i}"] = make_case((24, 96, 96), [(1, (slice(3, 5), slice(70, 74), slice(10, 13))),
                                                     (2, (slice(20, 21), slice(5, 7), slice(88, 90)))], seed=i)
    return MemorySource(cases)


@pytest.fixture
def case_factory():
    """``make_case`` as a fixture (test modules here are not a package)."""
    return make_case
