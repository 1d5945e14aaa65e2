"""Patch sampling with foreground oversampling.

A *case source* is any object with ``load(case_id) -> (data (C, *shape) float32, seg (1, *shape) int, fg)``
where ``fg`` maps a foreground class index to an ``(N, 3)`` array of voxel coordinates (``CaseCache`` is one;
tests use an in-memory dict). Arrays may be memory-mapped: only the sampled region is read.

Regions may be larger than the patch (the augmentation's rotation needs a margin, see
:func:`seg3d.data.augmentation.region_size`); the *patch* sits centred in the region, and foreground forcing
and image-border clipping are decided on the patch, so the chosen foreground voxel always lands in the patch.
Where the image is smaller than the region it is padded with 0 (image) and 0 (background label).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class CaseSource(Protocol):
    def load(self, case_id: str): ...


def num_forced(batch_size: int, oversample: float) -> int:
    """Samples per batch forced onto foreground: ceil(B * oversample), so at least that share."""
    if oversample <= 0:
        return 0
    return min(batch_size, math.ceil(batch_size * oversample - 1e-9))


def choose_center(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                  fg: dict[int, np.ndarray] | None = None, force_fg: bool = False) -> tuple[int, ...]:
    """Lower corner of the patch: uniform random, or around a voxel of a uniformly chosen present class.

    The foreground voxel is jittered by up to a quarter patch so objects are not always centred; the corner is
    clipped so the patch stays inside the image where the image is large enough (and covers it otherwise).
    """
    shape, patch = tuple(shape), tuple(patch)
    lo = [min(0, s - p) for s, p in zip(shape, patch)]
    hi = [max(0, s - p) for s, p in zip(shape, patch)]
    classes = [c for c, locs in (fg or {}).items() if len(locs)] if force_fg else []
    if not classes:
        return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))
    cls = classes[int(rng.integers(len(classes)))]
    locs = fg[cls]
    loc = locs[int(rng.integers(len(locs)))]
    corner = []
    for v, p, a, b in zip(loc, patch, lo, hi):
        j = p // 4
        c = int(v) + int(rng.integers(-j, j + 1)) - p // 2
        c = min(max(c, int(v) - p + 1), int(v))  # the voxel stays inside the patch
        corner.append(min(max(c, a), b))
    return tuple(corner)


def extract(arr: np.ndarray, corner: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``arr[:, corner:corner+size]`` with ``fill`` outside the array (copies only the overlap)."""
    out = np.full((arr.shape[0], *size), fill, dtype=arr.dtype)
    src, dst = [slice(None)], [slice(None)]
    for c, s, n in zip(corner, size, arr.shape[1:]):
        a, b = max(c, 0), min(c + s, n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - c, b - c))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def sample_patch(data: np.ndarray, seg: np.ndarray, fg: dict[int, np.ndarray], patch: Sequence[int],
                 rng: np.random.Generator, force_fg: bool = False, region: Sequence[int] | None = None,
                 slice_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image (C, *region) float32, label (1, *region) int16)`` pair from one case.

    2D patches from 3D cases: a slice along ``slice_axis`` (the forced foreground voxel's slice, or a random one),
    then the 2D patch from the remaining two axes.
    """
    image, label = sample_aligned([(data, 0), (seg, 0)], fg, patch, rng, force_fg, region, slice_axis)
    return image.astype(np.float32, copy=False), label.astype(np.int16, copy=False)


def sample_aligned(arrays: Sequence[tuple[np.ndarray, float]], fg: dict[int, np.ndarray], patch: Sequence[int],
                   rng: np.random.Generator, force_fg: bool = False, region: Sequence[int] | None = None,
                   slice_axis: int | None = None) -> list[np.ndarray]:
    """The same region of several arrays of one case, e.g. image, label and teacher probabilities.

    ``arrays``: ``(array (c_i, *shape), fill value outside the array)`` pairs sharing the spatial shape; returns
    ``(c_i, *region)`` arrays in their own dtypes. The random draws are those of :func:`sample_patch` (which
    calls this with the image and the label), so adding arrays does not change the patches drawn.
    """
    patch = tuple(patch)
    region = patch if region is None else tuple(region)
    arrays = list(arrays)
    first = arrays[0][0]
    if len(patch) == first.ndim - 2:  # 2D patch from a 3D case
        if slice_axis is None:
            raise ValueError("a 2D patch from a 3D case needs slice_axis")
        classes = [c for c, v in (fg or {}).items() if len(v)] if force_fg else []
        if classes:
            locs = fg[classes[int(rng.integers(len(classes)))]]
            loc = locs[int(rng.integers(len(locs)))]
            idx = int(loc[slice_axis])
            fg = {0: np.delete(locs[locs[:, slice_axis] == idx], slice_axis, axis=1)}
        else:
            idx = int(rng.integers(first.shape[1 + slice_axis]))
            fg = {}
        arrays = [(np.take(a, idx, axis=1 + slice_axis), f) for a, f in arrays]
    corner = choose_center(arrays[0][0].shape[1:], patch, rng, fg, force_fg)
    corner = tuple(c - (r - p) // 2 for c, r, p in zip(corner, region, patch))
    return [extract(a, corner, region, f) for a, f in arrays]


def sample_batch(source: CaseSource, case_ids: Sequence[str], patch: Sequence[int], batch_size: int,
                 rng: np.random.Generator, oversample: float = 1 / 3, region: Sequence[int] | None = None,
                 slice_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (B, C, *region) float32, labels (B, 1, *region) int16)``; the last
    :func:`num_forced` samples are centred on foreground (when their case has any)."""
    forced = num_forced(batch_size, oversample)
    images, labels = [], []
    for b in range(batch_size):
        cid = case_ids[int(rng.integers(len(case_ids)))]
        data, seg, fg = source.load(cid)
        img, lab = sample_patch(data, seg, fg, patch, rng, force_fg=b >= batch_size - forced, region=region,
                                slice_axis=slice_axis)
        images.append(img)
        labels.append(lab)
    return np.stack(images), np.stack(labels)
