"""Target spacing: the per-axis median, except for a coarse axis with few voxels (thick slices).

Resampling thick slices to their median spacing keeps them thick, but resampling *everything* to the coarse
spacing would throw away in-plane detail; so a clearly coarser axis that also has few voxels takes the
10th percentile of its spacings instead (never finer than the largest other axis).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANISOTROPY_RATIO = 3.0  # an axis counts as coarse when its spacing exceeds 3x every other axis
COARSE_PERCENTILE = 10.0


@dataclass(frozen=True)
class TargetSpacing:
    spacing: tuple[float, ...]
    anisotropic_axis: int | None  # coarse axis (target or median spacing > 3x every other), else None
    percentile_used: bool  # the coarse axis took the 10th percentile instead of the median


def target_spacing(spacings: np.ndarray, cropped_shapes: np.ndarray) -> TargetSpacing:
    """``spacings`` and ``cropped_shapes``: (N, ndim) per case, canonical array order."""
    spacings = np.asarray(spacings, dtype=float)
    shapes = np.asarray(cropped_shapes, dtype=float)
    median = np.median(spacings, axis=0)
    median_size = np.median(shapes, axis=0)
    target = median.copy()
    worst = int(np.argmax(median))
    others = [a for a in range(len(median)) if a != worst]
    coarse = bool(median[worst] > ANISOTROPY_RATIO * max(median[others]))
    few_voxels = bool(3 * median_size[worst] < min(median_size[others]))
    used = coarse and few_voxels
    if used:
        finer = float(np.percentile(spacings[:, worst], COARSE_PERCENTILE))
        target[worst] = max(finer, float(max(median[others])))
    aniso_axis = worst if coarse or target[worst] > ANISOTROPY_RATIO * max(target[others]) else None
    return TargetSpacing(tuple(round(float(v), 6) for v in target), aniso_axis, used)


def shape_at_spacing(shapes: np.ndarray, spacings: np.ndarray, target: tuple[float, ...]) -> tuple[int, ...]:
    """Median over cases of each case's shape after resampling to ``target`` (what the network sees)."""
    new = np.round(np.asarray(shapes, float) * np.asarray(spacings, float) / np.asarray(target, float))
    return tuple(int(v) for v in np.median(np.maximum(new, 1), axis=0))
