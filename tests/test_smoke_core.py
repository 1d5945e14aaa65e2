"""Core pieces every stage relies on: geometry round trip, reorientation, plan JSON validation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from seg3d.core.plan import Plan
from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry, Reorientation, read_image, write_image


def _random_geometry(rng, shape_zyx):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Geometry(tuple(reversed(shape_zyx)), tuple(rng.uniform(0.3, 4.0, 3)), tuple(rng.uniform(-200, 200, 3)),
                    tuple(q.ravel()))


@pytest.mark.parametrize("seed", range(5))
def test_write_read_keeps_exact_geometry(tmp_path, seed):
    rng = np.random.default_rng(seed)
    geo = _random_geometry(rng, (5, 6, 7))
    arr = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    write_image(arr, geo, tmp_path / "m.nii.gz")
    back = read_image(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(back.array, arr)
    assert back.geometry.size == geo.size
    np.testing.assert_allclose(back.geometry.spacing, geo.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.geometry.origin, geo.origin, atol=1e-4)
    np.testing.assert_allclose(back.geometry.direction, geo.direction, atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_reorientation_is_exact_and_physically_consistent(seed):
    rng = np.random.default_rng(seed)
    geo = _random_geometry(rng, (4, 5, 6))
    arr = rng.normal(size=(4, 5, 6))
    r = Reorientation.to_canonical(geo)
    can = r.apply(arr)
    np.testing.assert_array_equal(r.invert(can), arr)
    cgeo = r.geometry(geo)
    assert can.shape == cgeo.shape
    # canonical direction: each column's largest component is positive and on the diagonal
    m = cgeo.direction_matrix
    assert all(m[k, k] > 0 for k in range(3))

    # the same voxel sits at the same physical point in both grids
    def world(g, idx_xyz):
        return np.asarray(g.origin) + g.direction_matrix @ (np.asarray(g.spacing) * idx_xyz)

    zyx = (1, 2, 3)
    value = arr[zyx]
    hit = np.argwhere(can == value)[0]
    np.testing.assert_allclose(world(geo, np.array(zyx[::-1])), world(cgeo, hit[::-1]), atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_reorientation_of_near_axis_aligned_directions_gives_near_identity(seed):
    rng = np.random.default_rng(seed)
    perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)
    small, _ = np.linalg.qr(np.eye(3) + rng.normal(scale=0.15, size=(3, 3)))
    small = small * np.sign(np.diag(small))  # keep it close to identity
    geo = Geometry((6, 5, 4), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple((perm @ small).ravel()))
    m = Reorientation.to_canonical(geo).geometry(geo).direction_matrix
    assert all(np.argmax(np.abs(m[:, k])) == k and m[k, k] > 0.7 for k in range(3))


def test_plan_round_trip_and_invalid_patch(tmp_path, tiny_plan):
    tiny_plan.save(tmp_path / "plans.json")
    assert Plan.load(tmp_path) == tiny_plan
    raw = json.loads((tmp_path / "plans.json").read_text())
    raw["configurations"]["3d_fullres"]["patch_size"] = [8, 30, 32]
    (tmp_path / "plans.json").write_text(json.dumps(raw))
    with pytest.raises(Seg3dError, match=r"plans.json.*not divisible"):
        Plan.load(tmp_path)
