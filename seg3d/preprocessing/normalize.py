"""Intensity normalisation per channel, as the plan says (``ChannelNormalization``).

Statistics are accumulated in float64 (a float32 sum over 10^8 voxels drifts) without a float64 copy.
"""
from __future__ import annotations

import numpy as np

from seg3d.errors import Seg3dError

EPS = 1e-8


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        return 0.0, 1.0
    mean = float(np.mean(x, dtype=np.float64))
    std = float(np.std(x, dtype=np.float64))
    return mean, std


def normalize_channel(x: np.ndarray, norm, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (float32, any shape); ``mask`` is the nonzero region for ``zscore_nonzero``."""
    scheme = norm.scheme
    x = x.astype(np.float32, copy=True)
    if scheme == "ct":
        lo = -np.inf if norm.clip_low is None else norm.clip_low
        hi = np.inf if norm.clip_high is None else norm.clip_high
        np.clip(x, lo, hi, out=x)
        mean = 0.0 if norm.mean is None else float(norm.mean)
        std = 1.0 if norm.std is None else float(norm.std)
        x -= mean
        x /= max(std, EPS)
    elif scheme == "zscore":
        mean, std = _mean_std(x)
        x -= mean
        x /= max(std, EPS)
    elif scheme == "zscore_nonzero":
        if mask is None:
            mask = x != 0
        mean, std = _mean_std(x[mask])
        x -= mean
        x /= max(std, EPS)
        x[~mask] = 0.0
    elif scheme == "none":
        pass
    else:
        raise Seg3dError(f"unknown normalization scheme '{scheme}' for channel '{norm.channel}' in the plan")
    return x


def normalize(data: np.ndarray, normalization, mask: np.ndarray | None = None) -> np.ndarray:
    """``(C, *spatial)`` -> float32 normalised per channel by ``plan.normalization``."""
    if len(normalization) != data.shape[0]:
        raise Seg3dError(f"the image has {data.shape[0]} channel(s) but the plan normalises "
                         f"{len(normalization)}")
    return np.stack([normalize_channel(data[c], normalization[c], mask) for c in range(data.shape[0])])
