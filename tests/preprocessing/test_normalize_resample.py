"""Normalisation schemes against numpy; label resampling never invents classes; resampling coordinates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg3d.core.plan import ChannelNormalization
from seg3d.errors import Seg3dError
from seg3d.preprocessing.normalize import normalize
from seg3d.preprocessing.resample import interp_axis, resample_image, resample_labels


def test_schemes_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(50, 30, (3, 6, 7, 8)).astype(np.float32)
    x[:, :2] = 0
    mask = np.any(x != 0, axis=0)
    norms = (ChannelNormalization("a", "ct", -10.0, 80.0, 20.0, 15.0), ChannelNormalization("b", "zscore"),
             ChannelNormalization("c", "zscore_nonzero"))
    out = normalize(x, norms, mask)
    np.testing.assert_allclose(out[0], (np.clip(x[0], -10, 80) - 20) / 15, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], (x[1] - x[1].mean()) / x[1].std(), rtol=1e-4, atol=1e-4)
    inside = x[2][mask]
    np.testing.assert_allclose(out[2][mask], (inside - inside.mean()) / inside.std(), rtol=1e-4, atol=1e-4)
    assert np.all(out[2][~mask] == 0)
    with pytest.raises(Seg3dError):
        normalize(x[:2], norms, mask)


def test_label_resampling_never_invents_classes():
    rng = np.random.default_rng(1)
    seg = np.zeros((10, 30, 30), np.int16)
    seg[2:8, 5:15, 5:15] = 1
    seg[2:8, 12:25, 12:25] = 5  # touching structures with non-adjacent indices: linear blending would give 2..4
    seg[rng.random(seg.shape) < 0.01] = 3
    for shape in ((13, 41, 37), (7, 17, 23)):
        for aniso in (None, 0):
            out = resample_labels(seg, shape, aniso)
            assert out.shape == shape and out.dtype == np.int16
            assert set(np.unique(out)) <= set(np.unique(seg))


def test_linear_axis_equals_torch_trilinear():
    x = torch.rand(2, 9, 11, 13)
    ours = x
    for a, n in zip((1, 2, 3), (14, 7, 20)):
        ours = interp_axis(ours, a, n)
    ref = torch.nn.functional.interpolate(x[None], size=(14, 7, 20), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    part = interp_axis(x, 1, 14, start=3, stop=8)
    torch.testing.assert_close(part, interp_axis(x, 1, 14)[:, 3:8])


def test_image_constant_stays_constant():
    x = np.full((1, 5, 8, 8), 7.0, np.float32)
    out = resample_image(x, (15, 12, 5), aniso=0)
    assert out.shape == (1, 15, 12, 5) and np.allclose(out, 7.0)
