"""Patch sampling: shapes, padding, foreground oversampling."""
from __future__ import annotations

import numpy as np

from seg3d.data.sampling import extract, num_forced, sample_batch, sample_patch


def test_at_least_a_third_of_each_batch_contains_foreground(small_fg_source):
    rng = np.random.default_rng(0)
    for batch_size in (2, 3, 5):
        for _ in range(40):
            _, labels = sample_batch(small_fg_source, small_fg_source.case_ids, (8, 32, 32), batch_size, rng)
            with_fg = sum(bool((lab > 0).any()) for lab in labels)
            assert with_fg >= batch_size / 3
    assert num_forced(2, 1 / 3) == 1 and num_forced(3, 1 / 3) == 1 and num_forced(4, 0) == 0


def test_forced_patches_pick_classes_uniformly_and_jitter_the_centre(small_fg_source):
    data, seg, fg = small_fg_source.load("case0")
    rng = np.random.default_rng(1)
    classes, corners = [], set()
    for _ in range(200):
        _, lab = sample_patch(data, seg, fg, (8, 32, 32), rng, force_fg=True)
        present = set(np.unique(lab)) - {0}
        assert present
        classes.extend(present)
        corners.add(tuple(np.argwhere(lab[0] == next(iter(present)))[0]))
    counts = np.bincount(classes, minlength=3)
    assert counts[1] > 60 and counts[2] > 60  # class 2 has 4 voxels vs 24 for class 1, still ~half the picks
    assert len(corners) > 20


def test_small_images_are_padded_and_regions_centre_the_patch(case_factory):
    data, seg, fg = case_factory((4, 10, 12), [(1, (slice(0, 4), slice(0, 10), slice(0, 12)))])
    rng = np.random.default_rng(0)
    img, lab = sample_patch(data, seg, fg, (8, 16, 16), rng, force_fg=True)
    assert img.shape == (1, 8, 16, 16) and lab.shape == (1, 8, 16, 16)
    assert img.dtype == np.float32 and lab.dtype == np.int16
    assert lab.sum() == 4 * 10 * 12  # the whole image lies inside the padded patch
    assert (img[lab == 0] == 0).all()
    img, lab = sample_patch(data, seg, fg, (8, 16, 16), rng, region=(12, 24, 20))
    assert img.shape == (1, 12, 24, 20)
    inner = lab[:, 2:10, 4:20, 2:18]
    assert inner.sum() == 4 * 10 * 12  # the patch (centred in the region) still holds the whole image


def test_extract_copies_only_the_overlap():
    arr = np.arange(2 * 3 * 4).reshape(1, 2, 3, 4)
    out = extract(arr, (-1, 1, 2), (3, 3, 3), fill=-5)
    assert out.shape == (1, 3, 3, 3)
    assert (out[0, 0] == -5).all()
    assert out[0, 1, 0, 0] == arr[0, 0, 1, 2] and out[0, 1, 0, 2] == -5 and out[0, 1, 2, 0] == -5


def test_2d_patches_are_slices_along_the_slice_axis(small_fg_source):
    rng = np.random.default_rng(0)
    images, labels = sample_batch(small_fg_source, small_fg_source.case_ids, (32, 32), 3, rng, slice_axis=0)
    assert images.shape == (3, 1, 32, 32) and labels.shape == (3, 1, 32, 32)
    assert (labels[-1] > 0).any()  # the last sample is forced onto foreground
