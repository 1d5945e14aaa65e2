"""Augmentation keeps image and label aligned, labels in the valid set, shapes right; it is deterministic."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from seg3d.data.augmentation import AugmentationParams, augment_batch, region_size

SPATIAL_ONLY = AugmentationParams(p_rotation=1.0, p_scale=1.0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                                  p_lowres=0, p_gamma=0, p_gamma_inverted=0, p_mirror=0.5)


def _cube_batch(region, b=4):
    img = torch.zeros(b, 1, *region)
    lab = torch.zeros(b, 1, *region, dtype=torch.int16)
    c = [r // 2 for r in region]
    sl = tuple(slice(x - 5, x + 6) for x in c)
    img[(slice(None), 0, *sl)] = 1.0
    lab[(slice(None), 0, *sl)] = 2
    lab[(slice(None), 0, *(slice(x - 5, x - 2) for x in c))] = 1  # an asymmetric corner so flips matter
    img[(slice(None), 0, *(slice(x - 5, x - 2) for x in c))] = 3.0
    return img, lab


def test_region_is_large_enough_and_crop_parity_even():
    p = AugmentationParams()
    for patch, aniso in [((40, 56, 40), None), ((8, 32, 32), 0), ((64, 64), None)]:
        r = region_size(patch, p, aniso)
        assert all(a >= b and (a - b) % 2 == 0 for a, b in zip(r, patch))
        if aniso is not None or len(patch) == 2:  # a 45° in-plane rotation at scale 1.4: sqrt(2) * 1.4
            assert min(r[-2:]) >= 1.4 * 1.41 * min(patch[-2:]) - 1
        else:  # +-30° about each axis at scale 1.4
            assert all(a >= 1.4 * b for a, b in zip(r, patch))
    assert region_size((8, 32, 32), p, 0)[0] == 8  # no rotation out of plane: no margin along the thick axis
    assert region_size((8, 8, 8), None) == (8, 8, 8)


def test_rotated_labels_stay_on_the_bright_voxels_and_in_the_valid_set():
    patch = (24, 24, 24)
    region = region_size(patch, SPATIAL_ONLY)
    img, lab = _cube_batch(region, b=6)
    out_img, out_lab = augment_batch(img, lab, patch, SPATIAL_ONLY, np.random.default_rng(0), (0, 1, 2))
    assert out_img.shape == (6, 1, *patch) and out_lab.shape == (6, 1, *patch)
    assert out_lab.dtype == torch.int16
    assert set(torch.unique(out_lab).tolist()) <= {0, 1, 2}
    for i in range(6):
        fg = out_lab[i, 0] > 0
        assert fg.sum() > 100  # the cube is still in view
        # labelled voxels are bright, unlabelled far from it are dark (interpolation blurs only the border)
        assert out_img[i, 0][fg].mean() > 0.8
        assert out_img[i, 0][~fg].mean() < 0.1
        corner = out_lab[i, 0] == 1
        assert out_img[i, 0][corner].mean() > 2.0  # the asymmetric corner moved with its label


def test_in_plane_rotation_never_mixes_slices_along_the_anisotropic_axis():
    patch = (6, 24, 24)
    region = region_size(patch, SPATIAL_ONLY, anisotropic_axis=0)
    img = torch.arange(region[0], dtype=torch.float32).reshape(1, 1, -1, 1, 1).expand(3, 1, *region).clone()
    lab = torch.zeros(3, 1, *region, dtype=torch.int16)
    params = dataclasses.replace(SPATIAL_ONLY, p_scale=0.0, p_mirror=0.0)
    out, _ = augment_batch(img, lab, patch, params, np.random.default_rng(3), (), anisotropic_axis=0)
    centre = out[:, 0, :, 12, 12]  # the in-plane centre never leaves its slice
    assert torch.allclose(centre, torch.arange(6, dtype=torch.float32).expand(3, 6), atol=1e-4)


def test_no_spatial_transform_is_an_exact_centre_crop_and_mirroring_flips_both():
    params = AugmentationParams(p_rotation=0, p_scale=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                                p_lowres=0, p_gamma=0, p_gamma_inverted=0, p_mirror=1.0)
    img = torch.randn(2, 1, 10, 12, 14)
    lab = (img > 0).to(torch.int16)
    out_img, out_lab = augment_batch(img, lab, (10, 12, 14), params, np.random.default_rng(0), (2,))
    assert torch.equal(out_img, img.flip(4)) and torch.equal(out_lab, lab.flip(4))


def test_intensity_transforms_keep_shape_dtype_and_are_deterministic():
    params = AugmentationParams(p_rotation=0.5, p_scale=0.5, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1,
                                p_lowres=1, p_gamma=1, p_gamma_inverted=0.5)
    img = torch.randn(3, 2, 20, 20, 20)
    lab = torch.randint(0, 3, (3, 1, 20, 20, 20), dtype=torch.int16)
    a = augment_batch(img, lab, (16, 16, 16), params, np.random.default_rng(7), (0, 1, 2))
    b = augment_batch(img, lab, (16, 16, 16), params, np.random.default_rng(7), (0, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 2, 16, 16, 16) and a[0].dtype == torch.float32 and torch.isfinite(a[0]).all()
    assert not torch.equal(a[0], img[:, :, 2:18, 2:18, 2:18])


def test_2d_batches():
    patch = (32, 32)
    region = region_size(patch, SPATIAL_ONLY)
    img, lab = _cube_batch(region, b=3)
    out_img, out_lab = augment_batch(img, lab, patch, AugmentationParams(), np.random.default_rng(0), (0, 1))
    assert out_img.shape == (3, 1, 32, 32) and set(torch.unique(out_lab).tolist()) <= {0, 1, 2}
