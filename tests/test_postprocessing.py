"""The 1/3 connected-component rule and its per-class cross-validation decision, on constructed masks."""
from __future__ import annotations

import numpy as np
import pytest

from seg3d.io.image import Geometry, write_image
from seg3d.postprocessing import PostprocessingRule, decide_from_pairs, remove_small_components


def _cube(a, start, edge, value):
    z, y, x = start
    a[z:z + edge, y:y + edge, x:x + edge] = value


def test_one_third_rule_per_class():
    a = np.zeros((30, 30, 30), np.uint8)
    _cube(a, (0, 0, 0), 5, 1)      # 125 voxels: class 1's largest
    _cube(a, (10, 10, 10), 4, 1)   # 64 >= 125/3: kept
    _cube(a, (20, 0, 0), 3, 1)     # 27 < 41.7: removed
    _cube(a, (0, 20, 20), 2, 2)    # 8 voxels: class 2's only component, kept whatever its size
    a[29, 29, 29] = 3              # class 3 not listed: untouched
    a[28, 0, 29] = 3
    out = remove_small_components(a, [1, 2])
    assert (out == 1).sum() == 125 + 64
    assert (out[20:23, 0:3, 0:3] == 0).all()
    assert (out == 2).sum() == 8 and (out == 3).sum() == 2
    assert (a == 1).sum() == 125 + 64 + 27  # input untouched


def test_components_touching_other_classes_and_diagonals():
    a = np.zeros((12, 12, 12), np.uint8)
    _cube(a, (0, 0, 0), 4, 1)
    a[4, 4, 4] = 1                 # touches the cube only at a corner: same component (26-connectivity)
    _cube(a, (6, 6, 6), 3, 2)
    a[9, 9, 9] = 1                 # single voxel of class 1 touching class 2: its own class-1 component
    out = remove_small_components(a, [1, 2])
    assert out[4, 4, 4] == 1 and out[9, 9, 9] == 0 and (out == 2).sum() == 27


def test_absolute_minimum_volume_uses_spacing():
    a = np.zeros((10, 10, 10), np.uint8)
    _cube(a, (0, 0, 0), 2, 1)      # 8 voxels x 2 mm^3 = 16 mm^3
    out = remove_small_components(a, [1], fraction=0.0, min_volume_mm3=20.0, spacing=(2.0, 1.0, 1.0))
    assert not out.any()
    out = remove_small_components(a, [1], fraction=0.0, min_volume_mm3=10.0, spacing=(2.0, 1.0, 1.0))
    assert (out == 1).sum() == 8


def test_decision_applies_only_where_dice_improves(tmp_path):
    """Class 1: predictions carry a false island (rule helps). Class 2: the reference itself has a small
    separate part that the prediction found (rule hurts)."""
    geo = Geometry((24, 24, 24), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pairs = []
    for i in range(3):
        ref = np.zeros((24, 24, 24), np.uint8)
        _cube(ref, (1, 1, 1), 6, 1)
        _cube(ref, (12, 12, 12), 6, 2)
        _cube(ref, (2, 16, 2), 3, 2)           # small but real
        pred = ref.copy()
        _cube(pred, (18, 2, 18), 2 + i % 2, 1)  # false positive island
        write_image(ref, geo, tmp_path / f"ref{i}.nii.gz")
        write_image(pred, geo, tmp_path / f"pred{i}.nii.gz")
        pairs.append((tmp_path / f"pred{i}.nii.gz", tmp_path / f"ref{i}.nii.gz"))
    rule = decide_from_pairs(pairs, (0, 1, 2), workers=1)
    assert rule.classes == (1,)
    assert rule.evidence["1"]["dice_after"] == pytest.approx(1.0)
    assert rule.evidence["2"]["dice_after"] < rule.evidence["2"]["dice_before"] == pytest.approx(1.0)
    rule.save(tmp_path / "postprocessing.json")
    loaded = PostprocessingRule.load(tmp_path / "postprocessing.json")
    assert loaded.classes == (1,) and loaded.fraction == pytest.approx(1 / 3)
