"""Planner presets: a memory budget and the network family to plan, as JSON files.

The editable copies live in ``plans/presets/*.json``; identical packaged copies in ``seg3d/presets/`` make
them available to an installed seg3d (a test keeps the two identical). Every field is explained in the
files themselves (``"_doc"``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from importlib import resources

from seg3d.errors import Seg3dError

PRESET_NAMES = ("8gb", "24gb", "40gb", "80gb", "cpu")


@dataclass(frozen=True)
class Preset:
    name: str
    memory_gb: float  # training memory budget (GPU memory; RAM for the cpu preset)
    device: str  # cuda | cpu: which device's memory behaviour the estimate models
    overhead_gb: float  # device context outside the allocator (CUDA context), subtracted from the budget
    precision: str  # fp16 | bf16 | fp32
    optimizer: str  # sgd | adamw (optimizer state in the estimate)
    base_features: int
    max_features_3d: int
    max_features_2d: int
    max_stages_3d: int
    max_stages_2d: int
    patch_voxels_3d: int  # initial patch budget before clipping to the median image
    patch_voxels_2d: int
    batch_fraction: float  # one batch covers at most this fraction of the dataset's voxels
    min_batch: int
    max_batch: int | None  # hard cap (CPU throughput), None: memory and batch_fraction decide
    min_feature_map: int
    configurations: tuple[str, ...]
    description: str = ""
    # shrink a patch padded beyond the median image back inside it (padding is compute a CPU cannot spare)
    patch_within_image: bool = False
    # defaults for `seg3d train` on plans made with this preset (optimizer, lr, augmentation); recorded in the
    # plan's typed `training` field (TrainingDefaults), overridden by the command line
    training: dict = field(default_factory=dict)


def load_preset(name: str, memory_gb: float | None = None) -> Preset:
    """The named preset, with its memory budget replaced by ``memory_gb`` when given."""
    key = str(name).lower()
    if key not in PRESET_NAMES:
        raise Seg3dError(f"unknown preset '{name}' (choose from {', '.join(PRESET_NAMES)})")
    raw = json.loads(resources.files("seg3d").joinpath("presets", f"{key}.json").read_text())
    preset = preset_from_dict(raw)
    if memory_gb is not None:
        if not memory_gb > preset.overhead_gb:
            raise Seg3dError(f"memory budget {memory_gb} GB is too small (needs more than the "
                             f"{preset.overhead_gb} GB device overhead)")
        preset = replace(preset, memory_gb=float(memory_gb))
    return preset


def preset_from_dict(raw: dict) -> Preset:
    names = {f.name for f in fields(Preset)}
    unknown = sorted(k for k in raw if k not in names and not k.startswith("_"))
    if unknown:
        raise Seg3dError(f"preset '{raw.get('name')}' has unknown fields: {', '.join(unknown)}")
    d = {k: v for k, v in raw.items() if k in names}
    d["configurations"] = tuple(d.get("configurations", ()))
    try:
        p = Preset(**d)
    except TypeError as e:
        raise Seg3dError(f"preset '{raw.get('name')}' is incomplete: {e}") from None
    if p.precision not in ("fp16", "bf16", "fp32") or p.optimizer not in ("sgd", "adamw"):
        raise Seg3dError(f"preset '{p.name}': precision must be fp16/bf16/fp32 and optimizer sgd/adamw")
    unknown_training = sorted(set(p.training) - {"optimizer", "lr", "augmentation"})
    if unknown_training:
        raise Seg3dError(f"preset '{p.name}': unknown training defaults: {', '.join(unknown_training)}")
    if "3d_fullres" not in p.configurations or p.min_batch < 1:
        raise Seg3dError(f"preset '{p.name}': needs 3d_fullres among its configurations and min_batch >= 1")
    return p
