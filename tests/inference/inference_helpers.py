"""Helpers shared by the inference tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def random_geometry(rng: np.random.Generator, size=(40, 36, 11)):
    """A grid with a random rotation (oblique), random flips/permutation, origin and anisotropic spacing."""
    from scipy.spatial.transform import Rotation

    from seg3d.io.image import Geometry

    rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], size=3)
    direction = rot @ perm if rng.random() < 0.5 else perm
    spacing = tuple(float(v) for v in rng.uniform(0.6, 3.5, size=3))
    origin = tuple(float(v) for v in rng.uniform(-200, 200, size=3))
    return Geometry(tuple(int(s) for s in size), spacing, origin, tuple(float(v) for v in direction.ravel()))


def write_case(folder: Path, case_id: str, geometry, channels: int = 1, seed: int = 0, suffix: bool = True,
               dtype=np.float32) -> list[Path]:
    from seg3d.io.image import write_image

    rng = np.random.default_rng(seed)
    paths = []
    for c in range(channels):
        arr = (rng.normal(100, 20, geometry.shape) * (1 + c)).astype(dtype)
        name = f"{case_id}_{c:04d}.nii.gz" if suffix else f"{case_id}.nii.gz"
        write_image(arr, geometry, folder / name)
        paths.append(folder / name)
    return paths


def make_model_dir(root: Path, plan, folds=(0,), seed: int = 0) -> Path:
    """Save ``plan`` and one random network per fold in the checkpoint format the trainer writes."""
    import torch

    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.nets import build_network

    root.mkdir(parents=True, exist_ok=True)
    plan.save(root / "plans.json")
    folder = ModelFolder(root)
    folder.save_info(ModelInfo(config="3d_fullres"))
    cfg = plan.config("3d_fullres")
    for f in folds:
        torch.manual_seed(seed + int(f))
        net = build_network(cfg, plan.num_channels, plan.num_classes)
        d = folder.fold_dir(f)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"model": net.state_dict(), "arch": "unet", "config": "3d_fullres",
                    "num_classes": plan.num_classes}, d / "checkpoint_final.pt")
    return root
