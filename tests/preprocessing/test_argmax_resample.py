"""argmax_slabs: the argmax of resampled probabilities, interpolating only the candidate classes, equals the
argmax over every class interpolated (same interpolation code), voxel for voxel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg3d.preprocessing.argmax_resample import argmax_reference, argmax_slabs, cell_index
from seg3d.preprocessing.resample import interp_axis

GRIDS = [
    ((5, 7, 9), (11, 20, 13), ("linear", "linear", "linear")),  # upsampling
    ((5, 7, 9), (3, 4, 20), ("nearest", "linear", "linear")),  # anisotropic axis, down and up
    ((1, 7, 9), (4, 12, 12), ("linear", "linear", "linear")),  # a single source slice
    ((6, 1, 9), (12, 1, 30), ("linear", "linear", "linear")),  # a single source row
    ((6, 8, 9), (6, 8, 9), ("linear", "linear", "linear")),  # same grid
    ((4, 30, 31), (9, 10, 11), ("linear", "linear", "linear")),  # downsampling in-plane
]


def _probs(kind: str, k: int, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "soft":
        return torch.softmax(3 * torch.randn(k, *shape, generator=g), 0)
    lab = torch.randint(0, k, shape, generator=g)  # one-hot: exact ties on every cell border
    return torch.nn.functional.one_hot(lab, k).permute(3, 0, 1, 2).float()


def _run(probs, dst, modes, slab_bytes, fallback=False) -> np.ndarray:
    parts = []
    expect = 0
    for start, stop, idx in argmax_slabs(probs, dst, modes, slab_bytes, fallback=fallback):
        assert start == expect and idx.shape == (stop - start, *dst[1:]) and idx.dtype == torch.int16
        expect = stop
        parts.append(idx.numpy())
    assert expect == dst[0]
    return np.concatenate(parts)


@pytest.mark.parametrize("src,dst,modes", GRIDS)
@pytest.mark.parametrize("kind", ["soft", "onehot"])
def test_equals_argmax_over_all_classes(src, dst, modes, kind):
    probs = _probs(kind, 6, src, seed=len(src) + sum(dst))
    ref = argmax_reference(probs, dst, modes)
    for slab_bytes in (1, 2**12, 2**30):  # one row per slab, a few rows, everything at once
        for dtype in (torch.float32, torch.float16):
            out = _run(probs.to(dtype), dst, modes, slab_bytes)
            ref_d = ref if dtype == torch.float32 else argmax_reference(probs.to(dtype), dst, modes)
            np.testing.assert_array_equal(out, ref_d)


@pytest.mark.parametrize("src,dst,modes", GRIDS[:3])
def test_fallback_agrees_except_near_ties(src, dst, modes):
    """Interpolating every slab candidate everywhere (F.interpolate in-plane) differs from the reference only
    by float rounding: voxels whose two best classes are more than 1e-5 apart are identical."""
    probs = _probs("soft", 6, src, seed=3)
    ref = argmax_reference(probs, dst, modes)
    x = probs
    for a in range(3):
        x = interp_axis(x, a + 1, dst[a], modes[a])
    top2 = torch.topk(x, 2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-5).numpy()
    out = _run(probs, dst, modes, 2**12, fallback=True)
    np.testing.assert_array_equal(out[clear], ref[clear])
    assert clear.mean() > 0.99


def test_auto_choice_is_exact_on_structured_and_close_on_flat():
    """``fallback=None`` (what revert_to_original uses) on a flat, untrained-looking map and a structured one."""
    src, dst, modes = GRIDS[0]
    flat = _probs("soft", 6, src, seed=5)
    auto = _run(flat, dst, modes, 2**12, fallback=None)
    assert (auto == argmax_reference(flat, dst, modes)).mean() > 0.999


def test_structured_map_prunes_and_stays_exact():
    """A nearly one-hot map of blobs (what a trained network gives): still exact, background-only slabs
    are filled without interpolation."""
    z, y, x = np.mgrid[:12, :20, :20]
    lab = np.zeros((12, 20, 20), np.int64)
    lab[(z - 4) ** 2 + (y - 6) ** 2 + (x - 6) ** 2 < 12] = 3
    lab[(z - 5) ** 2 + (y - 13) ** 2 + (x - 12) ** 2 < 16] = 7
    lab[9:, :, :] = 0
    logits = 10 * torch.nn.functional.one_hot(torch.from_numpy(lab), 9).permute(3, 0, 1, 2).float()
    probs = torch.softmax(logits + 0.2 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)), 0)
    dst = (36, 50, 50)
    modes = ("linear",) * 3
    out = _run(probs, dst, modes, 2**16, fallback=None)
    np.testing.assert_array_equal(out, argmax_reference(probs, dst, modes))
    assert set(np.unique(out)) == {0, 3, 7}
    assert (out[30:] == 0).all()


def test_cell_index_is_monotonic_and_in_range():
    for n_in, n_out, mode in [(5, 17, "linear"), (9, 4, "nearest"), (1, 6, "linear"), (7, 7, "linear")]:
        c = cell_index(n_in, n_out, mode)
        assert c.shape == (n_out,) and (c[1:] >= c[:-1]).all()
        assert int(c.min()) >= 0 and int(c.max()) <= max(n_in - 2, 0)


def test_rejects_non_3d():
    with pytest.raises(ValueError, match="3D"):
        next(argmax_slabs(torch.ones(2, 4, 4), (8, 8), ("linear", "linear"), 2**20))


@pytest.mark.parametrize("fallback", [False, True])
def test_float64_scores_are_compared_in_float64(fallback):
    """float64 scores (e.g. a numpy array handed to revert_to_original) are interpolated and compared in float64,
    as ``interp_axis`` does: class 1 beats class 0 by 1e-9 everywhere, which float32 would round to a tie."""
    g = torch.Generator().manual_seed(4)
    src, dst, modes = GRIDS[1]
    p0 = 0.3 + 0.4 * torch.rand(src, generator=g, dtype=torch.float64)
    probs = torch.stack([p0, p0 + 1e-9, 0.1 * torch.rand(src, generator=g, dtype=torch.float64)])
    ref = argmax_reference(probs, dst, modes)
    assert (ref == 1).all()
    np.testing.assert_array_equal(_run(probs, dst, modes, 2**12, fallback=fallback), ref)
