"""Batched data augmentation in torch, on whatever device the batch is on.

Spatial: mirroring over ``mirror_axes``, rotation and scaling applied with ONE ``affine_grid``/``grid_sample``
per batch (image trilinear, label nearest) from a region sampled larger than the patch (:func:`region_size`),
so rotated corners hold real image content. Rotation is in-plane (about ``anisotropic_axis``) when the data
is anisotropic, and a single in-plane angle in 2D. Samples without a spatial transform are cropped exactly
(no interpolation). Intensity: Gaussian noise, Gaussian blur, brightness, contrast, low-resolution
simulation, gamma (plain and inverted). Default probabilities follow nnU-Net's (see ANCHORS.md).
All random draws come from the numpy ``rng`` passed in, so a batch is a pure function of its seed.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seg3d.errors import Seg3dError


@dataclass(frozen=True)
class AugmentationParams:
    """Per-sample probabilities and ranges."""

    p_rotation: float = 0.2
    rotation_deg: float = 30.0          # 3D, about each axis
    rotation_deg_inplane: float = 180.0  # 2D and in-plane (anisotropic) rotation
    p_scale: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)  # >1 zooms out (samples a larger area)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5               # per axis in mirror_axes


# Named settings for ``seg3d train --augmentation``. ``default``: nnU-Net's probabilities, for full-length
# runs where variety fights over-fitting. ``light``: mirroring plus mild brightness/contrast/gamma, for runs of a
# few hundred iterations, which under-fit rather than over-fit: spatial and degradation transforms slow early
# learning there (measured on the hippocampus data, benchmarks/RESULTS.md "Training"). ``none``: no augmentation.
AUGMENTATION_PRESETS: dict[str, AugmentationParams | None] = {
    "default": AugmentationParams(),
    "light": AugmentationParams(p_rotation=0.0, p_scale=0.0, p_noise=0.0, p_blur=0.0, p_brightness=0.15,
                                p_contrast=0.15, p_lowres=0.0, p_gamma=0.15, p_gamma_inverted=0.0),
    "none": None,
}


def augmentation_preset(name: str) -> AugmentationParams | None:
    """The :data:`AUGMENTATION_PRESETS` entry ``name`` (``None``: augmentation off)."""
    if name not in AUGMENTATION_PRESETS:

        raise Seg3dError(f"unknown augmentation '{name}' (choose from {', '.join(AUGMENTATION_PRESETS)})")
    return AUGMENTATION_PRESETS[name]


def _rotation(angles: Sequence[float], ndim: int, inplane_axis: int | None) -> np.ndarray:
    """Rotation matrix in array-axis order. 3D: about each axis in turn; in-plane: about ``inplane_axis``."""
    if ndim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    m = np.eye(3)
    axes = [inplane_axis] if inplane_axis is not None else [0, 1, 2]
    for ax, a in zip(axes, angles):
        i, j = [k for k in range(3) if k != ax]
        r = np.eye(3)
        c, s = math.cos(a), math.sin(a)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        m = r @ m
    return m


def _max_rotation(params: AugmentationParams, ndim: int, inplane_axis: int | None) -> tuple[float, int]:
    if ndim == 2 or inplane_axis is not None:
        return math.radians(params.rotation_deg_inplane), 1
    return math.radians(params.rotation_deg), 3


def region_size(patch: Sequence[int], params: AugmentationParams | None, anisotropic_axis: int | None = None
                ) -> tuple[int, ...]:
    """Region to sample so any rotated/scaled patch fits in it (region − patch even, for exact centre crops)."""
    patch = tuple(int(p) for p in patch)
    if params is None or (params.p_rotation <= 0 and params.p_scale <= 0):
        return patch
    ndim = len(patch)
    inplane = anisotropic_axis if ndim == 3 else None
    amax, n = _max_rotation(params, ndim, inplane)
    amax = min(amax, math.pi / 2) if params.p_rotation > 0 else 0.0  # beyond 90° the extent repeats
    smax = max(1.0, params.scale[1]) if params.p_scale > 0 else 1.0
    half = np.array(patch, float) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    extent = half.copy()
    grid = np.linspace(-amax, amax, 25 if n == 1 else 9)
    grid = np.concatenate([grid, [a for a in (-math.pi / 4, math.pi / 4) if abs(a) <= amax]])
    for angles in itertools.product(*[grid] * n):
        rot = _rotation(angles, ndim, inplane)
        extent = np.maximum(extent, np.abs(corners @ rot.T).max(axis=0))
    region = np.ceil(2 * extent * smax).astype(int)
    if inplane is not None:
        region[inplane] = patch[inplane]
    region += (region - np.array(patch)) % 2
    return tuple(int(r) for r in region)


def _center_crop(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    idx = [slice(None), slice(None)]
    for n, p in zip(x.shape[2:], patch):
        o = (n - p) // 2
        idx.append(slice(o, o + p))
    return x[tuple(idx)]


def _spatial(image, label, patch, params, rng, anisotropic_axis):
    b, ndim = image.shape[0], image.ndim - 2
    region = image.shape[2:]
    inplane = anisotropic_axis if ndim == 3 else None
    amax, n = _max_rotation(params, ndim, inplane)
    rot = rng.random(b) < params.p_rotation
    scl = rng.random(b) < params.p_scale
    out_img, out_lab = _center_crop(image, patch), _center_crop(label, patch)
    todo = np.flatnonzero(rot | scl)
    if len(todo) == 0:  # copies: the caller's tensors are never modified in place
        return out_img.clone(memory_format=torch.contiguous_format), out_lab.clone(
            memory_format=torch.contiguous_format)
    thetas = []
    for i in todo:
        m = _rotation(rng.uniform(-amax, amax, n), ndim, inplane) if rot[i] else np.eye(ndim)
        if scl[i]:
            m = m * rng.uniform(*params.scale)
        lin = np.diag(1 / np.array(region, float)) @ m @ np.diag(np.array(patch, float))
        lin = lin[::-1, ::-1]  # affine_grid works in (x, y, z) order
        thetas.append(np.concatenate([lin, np.zeros((ndim, 1))], axis=1))
    theta = torch.as_tensor(np.stack(thetas), dtype=torch.float32, device=image.device)
    grid = F.affine_grid(theta, [len(todo), 1, *patch], align_corners=False)
    sel = torch.as_tensor(todo, device=image.device)
    img = F.grid_sample(image[sel].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(label[sel].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_img, out_lab = out_img.clone(), out_lab.clone()
    out_img[sel] = img.to(out_img.dtype)
    out_lab[sel] = lab.round().to(out_lab.dtype)
    return out_img, out_lab


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float, skip_axis: int | None) -> torch.Tensor:
    """Separable Gaussian blur of one sample (C, *spatial), each channel separately."""
    c, ndim = x.shape[0], x.ndim - 1
    k = _gaussian_kernel(sigma, x.device)
    y = x.unsqueeze(0)
    conv = F.conv3d if ndim == 3 else F.conv2d
    for ax in range(ndim):
        if ax == skip_axis:
            continue
        shape = [1] * ndim
        shape[ax] = len(k)
        pad = [0] * (2 * ndim)
        pad[2 * (ndim - 1 - ax)] = pad[2 * (ndim - 1 - ax) + 1] = len(k) // 2
        y = conv(F.pad(y, pad, mode="replicate"), k.reshape(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return y[0]


def _intensity(x: torch.Tensor, params: AugmentationParams, rng: np.random.Generator,
               skip_axis: int | None) -> torch.Tensor:
    """Intensity transforms of one sample (C, *spatial)."""
    if rng.random() < params.p_noise:
        std = math.sqrt(rng.uniform(*params.noise_variance))
        gen = torch.Generator(device=x.device).manual_seed(int(rng.integers(2 ** 62)))
        x = x + std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    if rng.random() < params.p_blur:
        x = _blur(x, rng.uniform(*params.blur_sigma), skip_axis)
    if rng.random() < params.p_brightness:
        x = x * rng.uniform(*params.brightness)
    if rng.random() < params.p_contrast:
        dims = tuple(range(1, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        x = torch.minimum(torch.maximum((x - mean) * rng.uniform(*params.contrast) + mean, lo), hi)
    if rng.random() < params.p_lowres:
        zoom = rng.uniform(*params.lowres_zoom)
        shape = x.shape[1:]
        small = [s if ax == skip_axis else max(1, round(s * zoom)) for ax, s in enumerate(shape)]
        mode = "trilinear" if x.ndim == 4 else "bilinear"
        x = F.interpolate(F.interpolate(x[None], size=small, mode="nearest"), size=shape, mode=mode,
                          align_corners=False)[0]
    for p, invert in ((params.p_gamma_inverted, True), (params.p_gamma, False)):
        if rng.random() < p:
            x = _gamma(x, rng, params.gamma, invert)
    return x


def _gamma(x: torch.Tensor, rng: np.random.Generator, bounds: tuple[float, float], invert: bool) -> torch.Tensor:
    """x -> x**g on the [0, 1]-rescaled range, keeping each channel's mean and std (nnU-Net's retain_stats)."""
    g = rng.uniform(bounds[0], 1.0) if rng.random() < 0.5 and bounds[0] < 1 else rng.uniform(max(1.0, bounds[0]),
                                                                                            bounds[1])
    dims = tuple(range(1, x.ndim))
    if invert:
        x = -x
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    rng_ = (hi - lo).clamp_min(1e-7)
    y = ((x - lo) / rng_).clamp(0, 1) ** g * rng_ + lo
    y = (y - y.mean(dim=dims, keepdim=True)) / y.std(dim=dims, keepdim=True).clamp_min(1e-7) * std + mean
    return -y if invert else y


def augment_batch(image: torch.Tensor, label: torch.Tensor, patch: Sequence[int], params: AugmentationParams,
                  rng: np.random.Generator, mirror_axes: Sequence[int] = (), anisotropic_axis: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of regions ``(B, C, *region)`` / ``(B, 1, *region)`` into patches ``(B, C, *patch)``.

    Runs on ``image.device``; labels keep their dtype and only values already present (nearest sampling, 0
    outside the region).
    """
    patch = tuple(int(p) for p in patch)
    ndim = image.ndim - 2
    image, label = _spatial(image, label, patch, params, rng, anisotropic_axis)
    skip = anisotropic_axis if ndim == 3 else None
    image = torch.stack([_intensity(image[i], params, rng, skip) for i in range(image.shape[0])])
    for ax in mirror_axes:
        if ax >= ndim:
            continue
        flip = rng.random(image.shape[0]) < params.p_mirror
        idx = np.flatnonzero(flip)
        if len(idx):
            sel = torch.as_tensor(idx, device=image.device)
            image[sel] = image[sel].flip(ax + 2)
            label[sel] = label[sel].flip(ax + 2)
    return image.contiguous(), label.contiguous()
