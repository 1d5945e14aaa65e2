"""Metric values against hand computations and an independent scipy computation (anisotropic spacing)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from seg3d.errors import Seg3dError
from seg3d.evaluation.metrics import case_metrics, case_metrics_detail, confusion_matrix

SPACING = (3.0, 0.7, 1.2)  # (z, y, x), all different so that an axis mix-up changes every distance


def test_plates_shifted_along_z_give_exact_distance():
    ref = np.zeros((12, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[4, 2:8, 2:8] = 1
    pred[6, 2:8, 2:8] = 1  # two slices up: every voxel is 2 × 3 mm from the other plate
    m = case_metrics(pred, ref, SPACING, [1], tolerance_mm=5.9)[1]
    assert m.hd95_mm == pytest.approx(6.0)
    assert m.dice == 0.0 and m.iou == 0.0 and m.status == "ok"
    assert m.nsd == 0.0
    assert case_metrics(pred, ref, SPACING, [1], tolerance_mm=6.0)[1].nsd == 1.0
    assert m.volume_ref_mm3 == pytest.approx(36 * 3.0 * 0.7 * 1.2)


@pytest.mark.parametrize("axis,shift,expected", [(1, 1, 0.7), (2, 2, 2.4)])
def test_rods_shifted_in_plane_use_that_axis_spacing(axis, shift, expected):
    ref = np.zeros((10, 9, 9), np.uint8)
    ref[2:8, 4, 4] = 1
    pred = np.roll(ref, shift, axis=axis)
    m = case_metrics(pred, ref, SPACING, [1], tolerance_mm=expected)[1]
    assert m.hd95_mm == pytest.approx(expected, rel=1e-6)
    assert m.nsd == 1.0
    assert case_metrics(pred, ref, SPACING, [1], tolerance_mm=expected * 0.99)[1].nsd == 0.0


def test_box_with_distant_spike():
    """A box (6×8×10) and the same box plus one voxel 4 slices above it, by hand.

    Surface voxels of the box: 480 − 4·6·8 = 288. The spike is one surface voxel at 4 × 3 mm from the box.
    """
    ref = np.zeros((16, 12, 14), np.uint8)
    ref[2:8, 2:10, 2:12] = 1
    pred = ref.copy()
    pred[11, 5, 6] = 1
    m = case_metrics(pred, ref, SPACING, [1], tolerance_mm=1.0)[1]
    assert m.dice == pytest.approx(2 * 480 / (481 + 480))
    assert m.iou == pytest.approx(480 / 481)
    assert m.nsd == pytest.approx((288 + 288) / (289 + 288))
    assert m.hd95_mm == 0.0  # one outlier among 289 surface voxels is beyond the 95th percentile
    assert case_metrics(pred, ref, SPACING, [1], tolerance_mm=12.0)[1].nsd == 1.0
    assert m.volume_pred_mm3 == pytest.approx(481 * 3.0 * 0.7 * 1.2)


def test_empty_conventions():
    ref = np.zeros((6, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:4, 2:5, 2:5] = 1  # class 1 only in the reference
    pred[1:3, 1:3, 1:3] = 2  # class 2 only in the prediction
    m = case_metrics(pred, ref, SPACING, [1, 2, 3], tolerance_mm=1.0)
    assert m[1].status == "pred_empty" and m[1].dice == 0.0 and m[1].nsd == 0.0 and math.isnan(m[1].hd95_mm)
    assert m[2].status == "ref_empty" and m[2].dice == 0.0 and m[2].iou == 0.0 and math.isnan(m[2].hd95_mm)
    assert m[3].status == "both_empty"
    assert all(math.isnan(getattr(m[3], k)) for k in ("dice", "iou", "hd95_mm", "nsd"))
    assert m[3].volume_pred_mm3 == 0.0 and m[3].volume_ref_mm3 == 0.0


def _independent(pred_mask, ref_mask, spacing, tol):
    """Reference implementation with scipy only: 6-connected erosion edges, KD-tree distances in mm."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial import cKDTree

    ep = pred_mask & ~binary_erosion(pred_mask)
    er = ref_mask & ~binary_erosion(ref_mask)
    cp, cr = np.argwhere(ep) * np.asarray(spacing), np.argwhere(er) * np.asarray(spacing)
    d_pr, d_rp = cKDTree(cr).query(cp)[0], cKDTree(cp).query(cr)[0]
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    nsd = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (len(d_pr) + len(d_rp))
    dice = 2 * (pred_mask & ref_mask).sum() / (pred_mask.sum() + ref_mask.sum())
    return dice, hd95, nsd


def _ellipsoids(shape, spacing):
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")

    def ell(c, r):
        return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1

    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[ell((30, 14, 24), (21, 9, 12))] = 1
    ref[ell((15, 6, 9), (9, 4, 6))] = 4
    pred[ell((33, 14.7, 22.8), (18, 10, 12))] = 1
    pred[ell((18, 7, 10.2), (8, 4, 5))] = 4
    pred[2, 26, 40] = 4  # a stray voxel
    return pred, ref


def test_ellipsoids_match_an_independent_computation_and_monai_classes():
    import warnings

    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric

    shape = (20, 40, 50)
    pred, ref = _ellipsoids(shape, SPACING)
    got = case_metrics(pred, ref, SPACING, [1, 4], tolerance_mm=2.0)
    for v in (1, 4):
        dice, hd95, nsd = _independent(pred == v, ref == v, SPACING, 2.0)
        assert got[v].dice == pytest.approx(dice, abs=1e-9)
        assert got[v].hd95_mm == pytest.approx(hd95, rel=1e-5)
        assert got[v].nsd == pytest.approx(nsd, abs=1e-9)

    def onehot(a):
        idx = np.searchsorted([0, 1, 4], a)
        return torch.nn.functional.one_hot(torch.from_numpy(idx), 3).permute(3, 0, 1, 2)[None].float()

    with warnings.catch_warnings():  # MONAI warns about its own deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = HausdorffDistanceMetric(percentile=95)(onehot(pred), onehot(ref), spacing=list(SPACING))[0]
        sd = SurfaceDiceMetric([2.0, 2.0])(onehot(pred), onehot(ref), spacing=list(SPACING))[0]
    dm = DiceMetric(include_background=False)(onehot(pred), onehot(ref))[0]
    for i, v in enumerate((1, 4)):
        assert got[v].hd95_mm == pytest.approx(float(hd[i]), rel=1e-5)
        assert got[v].nsd == pytest.approx(float(sd[i]), abs=1e-6)
        assert got[v].dice == pytest.approx(float(dm[i]), abs=1e-6)


def test_object_touching_the_border_and_slab_confusion_matrix():
    ref = np.zeros((5, 6, 7), np.uint8)
    ref[:, :3, :] = 1  # touches five faces of the image
    pred = ref.copy()
    pred[:, 3, :] = 1
    m = case_metrics(pred, ref, SPACING, [1])[1]
    dice, hd95, nsd = _independent(pred == 1, ref == 1, SPACING, 1.0)
    assert (m.dice, m.nsd) == pytest.approx((dice, nsd))
    assert m.hd95_mm == pytest.approx(hd95)
    rng = np.random.default_rng(0)
    p, r = rng.integers(0, 4, (9, 5, 4)), rng.integers(0, 4, (9, 5, 4))
    full = np.bincount((p * 4 + r).ravel(), minlength=16).reshape(4, 4)
    assert np.array_equal(confusion_matrix(p, r, 4, slab_voxels=7), full)


def test_undeclared_values_and_bad_inputs():
    ref = np.zeros((4, 5, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    pred = ref.copy()
    pred[0, 0, 0] = 9
    _, unk_pred, unk_ref = case_metrics_detail(pred, ref, SPACING, [1])
    assert unk_pred == {9} and unk_ref == set()
    with pytest.raises(Seg3dError, match="non-integer"):
        case_metrics(ref.astype(np.float32) * 0.5, ref, SPACING, [1])
    with pytest.raises(Seg3dError, match="shape"):
        case_metrics(ref[:3], ref, SPACING, [1])
