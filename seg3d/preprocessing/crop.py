"""Cropping to the region where any channel is nonzero (shared by fingerprint, preprocessing, inference)."""
from __future__ import annotations

import numpy as np

BBox = tuple[tuple[int, int], ...]  # per axis (start, stop)


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels where any channel is nonzero, with holes filled (so dark structures inside stay in)."""
    from scipy import ndimage  # imported here: costs ~0.25 s, and `seg3d plan` may never need it

    mask = np.any(data != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def bbox_of(mask: np.ndarray) -> BBox:
    """Tight bounding box of ``mask``; the whole array when the mask is empty."""
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the trailing spatial axes of ``array`` (leading channel axes are kept)."""
    lead = array.ndim - len(bbox)
    return array[(slice(None),) * lead + tuple(slice(a, b) for a, b in bbox)]


def crop_to_nonzero(data: np.ndarray, seg: np.ndarray | None = None):
    """Crop ``data`` (C, *spatial) and ``seg`` to the nonzero region of ``data``.

    Returns ``(data, seg, bbox, mask)``; ``mask`` is the cropped nonzero mask, used by ``zscore_nonzero``.
    """
    mask = nonzero_mask(data)
    bbox = bbox_of(mask)
    return crop(data, bbox), (crop(seg, bbox) if seg is not None else None), bbox, crop(mask, bbox)
