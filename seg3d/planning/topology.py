"""U-Net topology from a patch size and a spacing (pooling, kernel sizes, features).

Rules: an axis is pooled while its feature map has at least ``2 * min_feature_map`` voxels (so at least
``min_feature_map`` after pooling) and its current spacing is less than 2x the finest spacing among the
poolable axes — a thick-slice axis waits until the in-plane axes have caught up, which makes the receptive
field physically isotropic. Kernels are 1 along an axis whose spacing is still 2x or more coarser than the
finest (a 3-voxel kernel there would mix distant anatomy), else 3; the bottleneck is 3 everywhere.
Features double per stage from ``base_features`` up to ``max_features``. The patch is padded up to a
multiple of the total stride.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from seg3d.core.plan import Topology


def plan_topology(patch: Sequence[int], spacing: Sequence[float], base_features: int = 32,
                  max_features: int = 320, max_stages: int = 6,
                  min_feature_map: int = 4) -> tuple[Topology, tuple[int, ...]]:
    """Return ``(topology, padded patch)`` for ``patch`` voxels at ``spacing`` (same axis order)."""
    nd = len(patch)
    cur_spacing = [float(s) for s in spacing]
    size = [int(p) for p in patch]
    kernel = [1] * nd

    def update_kernel() -> tuple[int, ...]:
        finest = min(cur_spacing)
        for a in range(nd):
            if kernel[a] == 1 and cur_spacing[a] / finest < 2.0:
                kernel[a] = 3
        return tuple(kernel)

    kernels = [update_kernel()]
    strides: list[tuple[int, ...]] = [(1,) * nd]
    while len(strides) < max_stages:
        poolable = [a for a in range(nd) if size[a] >= 2 * min_feature_map]
        if not poolable:
            break
        finest = min(cur_spacing[a] for a in poolable)
        pool = [a for a in poolable if cur_spacing[a] / finest < 2.0]
        stride = tuple(2 if a in pool else 1 for a in range(nd))
        for a in pool:
            cur_spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(stride)
        kernels.append(update_kernel())
    kernels[-1] = (3,) * nd
    features = tuple(min(base_features * 2 ** i, max_features) for i in range(len(strides)))
    topo = Topology(tuple(kernels), tuple(strides), features)
    padded = tuple(int(math.ceil(p / t) * t) for p, t in zip(patch, topo.total_stride))
    return topo, padded
