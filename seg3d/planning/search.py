"""Patch and batch size under a memory budget, and the 3d_fullres / 3d_lowres / 2d configurations.

Start from a large patch proportional to 1/spacing (the median image's shape in millimetres), clipped to the
median image; while training at the minimum batch does not fit the budget, shrink the axis whose patch is
largest relative to the median image by one divisibility step and re-plan the topology. Leftover memory goes
to a larger batch, capped so that one batch covers at most ``batch_fraction`` of the dataset's voxels.
Memory comes from :mod:`seg3d.planning.memory` (the real network on the meta device).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seg3d.core.plan import Configuration, Topology
from seg3d.planning.memory import estimate_training_memory
from seg3d.planning.presets import Preset
from seg3d.planning.spacing import shape_at_spacing
from seg3d.planning.topology import plan_topology

LOWRES_COVERAGE = 0.25  # 3d_lowres when the fullres patch covers less than this fraction of the median image
LOWRES_STEP = 1.03  # spacing growth per lowres step
LOWRES_MIN_REDUCTION = 2.0  # drop 3d_lowres unless it shrinks the median image at least 2x in voxels


@dataclass(frozen=True)
class Task:
    """What the network must fit: channels in, classes out, how big the dataset is, which architecture."""

    in_channels: int
    num_classes: int
    dataset_voxels: float  # median image voxels (at fullres spacing) x number of cases
    arch: str = "unet"  # the architecture whose training memory the estimate measures (seg3d.nets registry)


def initial_patch(spacing: Sequence[float], median_shape: Sequence[int], voxels: int) -> tuple[int, ...]:
    """A patch of about ``voxels`` voxels, proportional to 1/spacing (isotropic in mm), clipped to the image."""
    inv = 1.0 / np.asarray(spacing, dtype=float)
    patch = inv * (voxels / np.prod(inv)) ** (1.0 / len(inv))
    return tuple(int(max(1, min(round(p), m))) for p, m in zip(patch, median_shape))


def _topology(patch, spacing, preset: Preset) -> tuple[Topology, tuple[int, ...]]:
    nd = len(patch)
    return plan_topology(patch, spacing, preset.base_features,
                         preset.max_features_3d if nd == 3 else preset.max_features_2d,
                         preset.max_stages_3d if nd == 3 else preset.max_stages_2d, preset.min_feature_map)


def _estimate(topo, patch, batch, task: Task, preset: Preset):
    return estimate_training_memory(topo, patch, batch, task.in_channels, task.num_classes, preset.precision,
                                    preset.optimizer, arch=task.arch, overhead_gb=preset.overhead_gb,
                                    device=preset.device)


def batch_size_for(topo: Topology, patch: tuple[int, ...], task: Task, preset: Preset) -> int:
    """As many samples as fit the budget, capped by ``batch_fraction`` of the dataset and ``max_batch``."""
    at1 = _estimate(topo, patch, 1, task, preset)
    at2 = _estimate(topo, patch, 2, task, preset)
    per_sample = max(1, at2.total_bytes - at1.total_bytes)
    fixed = at1.total_bytes - per_sample
    by_memory = int((preset.memory_gb * 1024 ** 3 - fixed) // per_sample)
    by_data = int(preset.batch_fraction * task.dataset_voxels // math.prod(patch))
    batch = min(by_memory, by_data)
    if preset.max_batch is not None:
        batch = min(batch, preset.max_batch)
    return max(preset.min_batch, batch)


def fit_patch(spacing: tuple[float, ...], median_shape: tuple[int, ...], task: Task,
              preset: Preset) -> tuple[Topology, tuple[int, ...], bool]:
    """``(topology, patch, fits)``: the largest patch (by the shrinking rule) whose minimum batch fits."""
    nd = len(spacing)
    voxels = preset.patch_voxels_3d if nd == 3 else preset.patch_voxels_2d
    topo, patch = _topology(initial_patch(spacing, median_shape, voxels), spacing, preset)
    floor = 2 * preset.min_feature_map
    if preset.patch_within_image:
        topo, patch = _within_image(topo, patch, spacing, median_shape, preset, floor)
    for _ in range(10_000):  # each step removes voxels; the bound only guards against a re-padding cycle
        if _estimate(topo, patch, preset.min_batch, task, preset).total_gb <= preset.memory_gb:
            return topo, patch, True
        step = topo.total_stride
        order = np.argsort([-p / m for p, m in zip(patch, median_shape)], kind="stable")
        axis = next((int(a) for a in order if patch[a] - step[a] >= max(floor, 1)), None)
        if axis is None:
            return topo, patch, False
        smaller = list(patch)
        smaller[axis] -= step[axis]
        topo, patch = _topology(tuple(smaller), spacing, preset)
    return topo, patch, False


def _within_image(topo: Topology, patch: tuple[int, ...], spacing, median_shape, preset: Preset,
                  floor: int) -> tuple[Topology, tuple[int, ...]]:
    """Shrink axes that the pooling padded beyond the median image by one pooling step each, while they stay
    at least ``floor`` voxels (hippocampus, cpu preset: 40x56x40 -> 32x48x32, 1.65x faster training steps)."""
    for _ in range(1000):
        stride = topo.total_stride
        axis = next((a for a in range(len(patch))
                     if patch[a] > median_shape[a] and patch[a] - stride[a] >= max(floor, 1)), None)
        if axis is None:
            return topo, patch
        smaller = list(patch)
        smaller[axis] -= stride[axis]
        new_topo, new_patch = _topology(tuple(smaller), spacing, preset)
        if new_patch[axis] >= patch[axis]:  # re-padded to the same size: nothing to gain
            return topo, patch
        topo, patch = new_topo, new_patch
    return topo, patch


def make_configuration(name: str, spacing: tuple[float, ...], median_shape: tuple[int, ...], task: Task,
                       preset: Preset, anisotropic_axis: int | None = None,
                       slice_axis: int | None = None) -> tuple[Configuration, list[str]]:
    topo, patch, fits = fit_patch(spacing, median_shape, task, preset)
    too_big = f"{name}: even the smallest patch {patch} at batch {preset.min_batch} exceeds the " \
              f"{preset.memory_gb:g} GB budget"
    notes = [] if fits else [too_big]
    batch = batch_size_for(topo, patch, task, preset) if fits else preset.min_batch
    est = _estimate(topo, patch, batch, task, preset)
    nd = len(spacing)
    cfg = Configuration(name=name, spacing=tuple(float(s) for s in spacing), patch_size=tuple(patch),
                        batch_size=int(batch), topology=topo, median_shape=tuple(int(m) for m in median_shape),
                        estimated_memory_gb=round(est.total_gb, 3), precision=preset.precision,
                        mirror_axes=tuple(range(nd)), anisotropic_axis=anisotropic_axis if nd == 3 else None,
                        slice_axis=slice_axis, batch_dice=True)
    return cfg, notes


def lowres_spacing(spacing: tuple[float, ...], k: int) -> tuple[float, ...]:
    """Spacing after ``k`` growth steps: only the finer axes grow while the spacing is anisotropic (>2x)."""
    s = np.asarray(spacing, dtype=float)
    for _ in range(k):
        if s.max() / s.min() > 2:
            s = np.where(s < s.max(), s * LOWRES_STEP, s)
        else:
            s = s * LOWRES_STEP
    return tuple(round(float(v), 6) for v in s)


def plan_lowres(fullres: Configuration, shapes: np.ndarray, spacings: np.ndarray, task: Task,
                preset: Preset) -> tuple[Configuration | None, list[str]]:
    """3d_lowres when the fullres patch covers < 25% of the median image, else None.

    The smallest number of 1.03x spacing steps whose patch covers 25% of the (shrinking) median image is
    found by doubling then bisection (coverage grows with the spacing), not by one full search per step.
    """
    if math.prod(fullres.patch_size) / math.prod(fullres.median_shape) >= LOWRES_COVERAGE:
        return None, []
    cache: dict[int, tuple[Configuration, list[str]]] = {}

    def attempt(k: int):
        if k not in cache:
            sp = lowres_spacing(fullres.spacing, k)
            med = shape_at_spacing(shapes, spacings, sp)
            cache[k] = make_configuration("3d_lowres", sp, med, task, preset, fullres.anisotropic_axis)
        return cache[k]

    def covers(k: int) -> bool:
        c = attempt(k)[0]
        return math.prod(c.patch_size) / math.prod(c.median_shape) >= LOWRES_COVERAGE

    hi = 1
    while not covers(hi) and hi < 512:
        hi *= 2
    lo = hi // 2  # covers(lo) is False (or lo == 0: fullres itself does not cover)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if covers(mid) else (mid, hi)
    cfg, notes = attempt(hi)
    if math.prod(fullres.median_shape) / math.prod(cfg.median_shape) < LOWRES_MIN_REDUCTION:
        return None, ["3d_lowres dropped: its median image would be less than 2x smaller than fullres"]
    return cfg, notes
