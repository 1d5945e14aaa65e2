"""A phantom dataset generator for the demo and tests (deterministic from a seed).

Each case is a "body" (an ellipsoid of soft tissue, zero outside so that cropping matters) holding two or
three adjacent structures whose intensity distributions overlap, under a smooth multiplicative bias field
and Gaussian noise. Spacing is anisotropic (thick slices along z) and the direction matrix is not the
identity (flipped and slightly oblique, as a scanner would write it), so geometry handling is exercised.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.io.image import Geometry, write_image

LABELS = {"background": 0, "core": 1, "rim": 2, "satellite": 3}


def _rotation_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def make_case(rng: np.random.Generator, shape=(20, 64, 64), spacing_zyx=(3.0, 1.0, 1.0),
              num_structures: int = 3, permute_axes: bool = False):
    """One phantom: ``(image float32 (z,y,x), label uint8 (z,y,x), Geometry)``."""
    shape = tuple(int(s + rng.integers(-s // 8, s // 8 + 1)) for s in shape)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    # physical coordinates in mm, centred
    pz, py, px = [(g - n / 2) * s for g, n, s in zip((zz, yy, xx), shape, spacing_zyx)]
    ext = [n * s / 2 for n, s in zip(shape, spacing_zyx)]

    def ellipsoid(center, radii):
        return ((pz - center[0]) / radii[0]) ** 2 + ((py - center[1]) / radii[1]) ** 2 + \
            ((px - center[2]) / radii[2]) ** 2 <= 1.0

    body = ellipsoid((0, 0, 0), [e * 0.92 for e in ext])
    label = np.zeros(shape, np.uint8)
    c = np.array([rng.uniform(-0.15, 0.15) * e for e in ext])
    r_core = np.array([rng.uniform(0.28, 0.38) * e for e in ext])
    core = ellipsoid(c, r_core)
    # the rim wraps the core on one side: adjacent, touching, different texture
    rim = ellipsoid(c + r_core * np.array([0, 0.35, 0.35]), r_core * 1.25) & ~core
    label[rim & body] = 2
    label[core & body] = 1
    if num_structures >= 3:
        off = np.array([0, -1.0, 0.6]) * r_core * 1.3
        sat = ellipsoid(c + off, r_core * rng.uniform(0.55, 0.75)) & (label == 0) & body
        label[sat] = 3
    means = {0: 100.0, 1: 135.0, 2: 160.0, 3: 120.0}
    img = np.zeros(shape, np.float32)
    for v, m in means.items():
        img[label == v] = m
    bias = 1.0 + 0.15 * np.sin(py / ext[1] * rng.uniform(1, 2) + rng.uniform(0, 6)) * \
        np.cos(px / ext[2] * rng.uniform(1, 2) + rng.uniform(0, 6))
    img = img * bias + rng.normal(0, 18, shape).astype(np.float32)
    img[~body] = 0.0
    label[~body] = 0
    direction = np.diag([-1.0, -1.0, 1.0]) @ _rotation_z(rng.uniform(-8, 8))
    spacing_xyz = tuple(float(s) for s in reversed(spacing_zyx))
    if permute_axes:  # stored as (x<->z swapped): exercises reorientation to canonical
        img, label = np.transpose(img, (2, 1, 0)), np.transpose(label, (2, 1, 0))
        direction = direction[:, [2, 1, 0]]
        spacing_xyz = tuple(reversed(spacing_xyz))
    geo = Geometry(tuple(int(v) for v in reversed(img.shape)), spacing_xyz,
                   tuple(float(v) for v in rng.uniform(-120, 120, 3)), tuple(float(v) for v in direction.ravel()))
    return np.ascontiguousarray(img.astype(np.float32)), np.ascontiguousarray(label), geo


def make_phantom_dataset(out_dir: str | Path, num_cases: int = 24, seed: int = 0, shape=(20, 64, 64),
                         spacing_zyx=(3.0, 1.0, 1.0), num_structures: int = 3, num_test: int = 0,
                         mixed_orientation: bool = False) -> Path:
    """Write an nnU-Net v2 raw dataset of phantoms to ``out_dir`` and return it.

    ``num_test`` extra cases go to ``imagesTs``/``labelsTs`` (held out, for predict and evaluate).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    labels = {k: v for k, v in LABELS.items() if v <= num_structures}
    for i in range(num_cases + num_test):
        img, lab, geo = make_case(rng, shape, spacing_zyx, num_structures,
                                  permute_axes=mixed_orientation and i % 3 == 2)
        test = i >= num_cases
        cid = f"phantom_{i:03d}"
        write_image(img, geo, out / ("imagesTs" if test else "imagesTr") / f"{cid}_0000.nii.gz")
        write_image(lab, geo, out / ("labelsTs" if test else "labelsTr") / f"{cid}.nii.gz")
    write_json_atomic(out / "dataset.json", {
        "name": "Phantom", "description": f"seg3d synthetic phantoms (seed {seed})",
        "channel_names": {"0": "MRI"}, "labels": labels, "numTraining": num_cases, "file_ending": ".nii.gz",
    })
    return out


if __name__ == "__main__":  # pragma: no cover - handy for a quick look
    import sys

    p = make_phantom_dataset(sys.argv[1] if len(sys.argv) > 1 else "phantom")
    print(json.dumps({"written": str(p)}))
