import numpy as np

from seg3d.planning.planner import plan_normalization
from seg3d.planning.spacing import shape_at_spacing, target_spacing


def test_isotropic_takes_the_median():
    rng = np.random.default_rng(0)
    sp = rng.uniform(0.9, 1.1, (20, 3))
    ts = target_spacing(sp, np.full((20, 3), 100))
    assert np.allclose(ts.spacing, np.median(sp, axis=0), atol=1e-5)
    assert ts.anisotropic_axis is None and not ts.percentile_used


def test_prostate_like_thick_slices_take_the_10th_percentile():
    # 0.6 x 0.6 in-plane, 3-4.5 mm slices, ~20 slices vs ~320 in-plane voxels
    z = np.linspace(3.0, 4.5, 30)
    sp = np.stack([z, np.full(30, 0.6), np.full(30, 0.6)], axis=1)
    shapes = np.tile([20, 320, 320], (30, 1))
    ts = target_spacing(sp, shapes)
    assert ts.anisotropic_axis == 0 and ts.percentile_used
    assert np.isclose(ts.spacing[0], np.percentile(z, 10)) and ts.spacing[0] < np.median(z)
    assert ts.spacing[1:] == (0.6, 0.6)


def test_coarse_axis_with_many_voxels_keeps_its_median():
    # CT-like: 0.8 mm in-plane, 5 mm slices but 300 slices -> not "few voxels", median kept
    sp = np.tile([5.0, 0.8, 0.8], (10, 1))
    sp[:3, 0] = 2.5
    ts = target_spacing(sp, np.tile([300, 512, 512], (10, 1)))
    assert ts.spacing == (5.0, 0.8, 0.8) and not ts.percentile_used
    assert ts.anisotropic_axis == 0  # still resampled separately / augmented in-plane


def test_percentile_never_finer_than_the_largest_other_axis():
    sp = np.array([[4.0, 0.5, 1.2]] * 7 + [[0.9, 0.5, 1.2]] * 3)
    ts = target_spacing(sp, np.tile([10, 400, 200], (10, 1)))
    assert ts.percentile_used and ts.spacing[0] == 1.2


def test_ct_like_isotropic_ct_normalization_uses_dataset_foreground_stats(fingerprint):
    fp = fingerprint([(1.5, 0.8, 0.8)] * 5, [(200, 512, 512)] * 5, channel="ct")
    ts = target_spacing(fp.spacings, fp.cropped_shapes)
    assert ts.spacing == (1.5, 0.8, 0.8) and ts.anisotropic_axis is None
    (n,) = plan_normalization(fp)
    assert (n.scheme, n.clip_low, n.clip_high, n.mean, n.std) == ("ct", -900.0, 1500.0, 50.0, 200.0)


def test_mri_normalization_depends_on_cropping(fingerprint):
    full = fingerprint([(1, 1, 1)] * 3, [(50, 50, 50)] * 3, relative_crop=0.9)
    brain = fingerprint([(1, 1, 1)] * 3, [(50, 50, 50)] * 3, relative_crop=0.5)
    assert plan_normalization(full)[0].scheme == "zscore"
    assert plan_normalization(brain)[0].scheme == "zscore_nonzero"


def test_median_shape_at_target_spacing():
    assert shape_at_spacing(np.array([[10, 100, 100]]), np.array([[4.0, 0.5, 0.5]]), (2.0, 1.0, 1.0)) == (20, 50, 50)
