"""``plan_dataset``: checks, fingerprint, then the plan (spacing, normalization, configurations).

:func:`plan_from_fingerprint` is the pure part (a Fingerprint and a Preset in, a Plan out), so the rules
can be tested on hand-built fingerprints; :func:`plan_dataset` adds the dataset reading and the files.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from seg3d.core.plan import ChannelNormalization, Configuration, Plan, TrainingDefaults
from seg3d.core.plan_folder import PlanFolder
from seg3d.errors import Seg3dError
from seg3d.fingerprint import problems_error, scan_dataset
from seg3d.planning.memory import known_architecture
from seg3d.planning.presets import Preset, load_preset
from seg3d.planning.search import Task, make_configuration, plan_lowres
from seg3d.planning.spacing import shape_at_spacing, target_spacing
from seg3d.progress import ProgressFn, report

NONZERO_CROP_THRESHOLD = 0.75  # z-score inside the nonzero region when cropping keeps less than 3/4


def plan_normalization(fp) -> tuple[ChannelNormalization, ...]:
    """CT channels: dataset foreground clip + z-score; others: per-image z-score (inside nonzero if cropped)."""
    out = []
    for name, stats in zip(fp.channel_names, fp.channel_stats):
        if name.strip().lower() == "ct":
            out.append(ChannelNormalization(name, "ct", clip_low=float(stats.p00_5), clip_high=float(stats.p99_5),
                                            mean=float(stats.mean), std=float(max(stats.std, 1e-8))))
        elif fp.median_relative_cropped_size < NONZERO_CROP_THRESHOLD:
            out.append(ChannelNormalization(name, "zscore_nonzero"))
        else:
            out.append(ChannelNormalization(name, "zscore"))
    return tuple(out)


def plan_from_fingerprint(fp, preset: Preset | str = "8gb", progress: ProgressFn | None = None,
                          arch: str = "unet") -> Plan:
    """The plan for a dataset described by ``fp`` (a :class:`seg3d.fingerprint.Fingerprint`), with patch and
    batch sized for the training memory of ``arch`` (a name of the :mod:`seg3d.nets` registry)."""
    _check_arch(arch)
    preset = load_preset(preset) if isinstance(preset, str) else preset
    spacings, shapes = fp.spacings, fp.cropped_shapes
    ts = target_spacing(spacings, shapes)
    median = shape_at_spacing(shapes, spacings, ts.spacing)
    task = Task(in_channels=len(fp.channel_names), num_classes=len(fp.labels),
                dataset_voxels=float(math.prod(median)) * len(fp.cases), arch=arch)
    notes: list[str] = [] if arch == "unet" else [f"patch and batch are sized for the '{arch}' architecture: "
                                                   f"train with --arch {arch}"]
    if ts.percentile_used:
        notes.append(f"axis {ts.anisotropic_axis} is coarse with few voxels: its target spacing is the "
                     f"10th percentile of its spacings ({ts.spacing[ts.anisotropic_axis]:g} mm)")
    steps = len(preset.configurations) + 1
    report(progress, 1, steps, "3d_fullres")
    fullres, n = make_configuration("3d_fullres", ts.spacing, median, task, preset, ts.anisotropic_axis)
    configs: dict[str, Configuration] = {"3d_fullres": fullres}
    notes += n
    if "3d_lowres" in preset.configurations:
        report(progress, 2, steps, "3d_lowres")
        low, n = plan_lowres(fullres, shapes, spacings, task, preset)
        notes += n
        if low is not None:
            configs["3d_lowres"] = low
    if "2d" in preset.configurations:
        report(progress, steps - 1, steps, "2d")
        axis = ts.anisotropic_axis if ts.anisotropic_axis is not None else 0
        keep = [a for a in range(3) if a != axis]
        cfg2d, n = make_configuration("2d", tuple(ts.spacing[a] for a in keep), tuple(median[a] for a in keep),
                                      task, preset, slice_axis=axis)
        configs["2d"] = cfg2d
        notes += n
    report(progress, steps, steps, "planned")
    plan = Plan(dataset_name=fp.dataset_name, channel_names=tuple(fp.channel_names), labels=dict(fp.labels),
                normalization=plan_normalization(fp), configurations=configs,
                original_median_spacing=tuple(round(float(v), 6) for v in np.median(spacings, axis=0)),
                original_median_shape=tuple(int(v) for v in np.median(fp.shapes, axis=0)), preset=preset.name,
                gpu_memory_gb=float(preset.memory_gb), fingerprint_digest=fp.digest, notes=tuple(notes),
                training=TrainingDefaults.from_dict(preset.training))
    plan.validate()
    return plan


def _check_arch(arch: str) -> None:
    if not known_architecture(arch):
        from seg3d.nets import architecture_names  # here only: the registry imports torch, planning does not

        raise Seg3dError(f"unknown architecture '{arch}' (choose from {', '.join(architecture_names())})")


def plan_dataset(dataset_dir: str | Path, out_dir: str | Path, preset: str = "8gb",
                 gpu_memory_gb: float | None = None, workers: int | None = None,
                 progress: ProgressFn | None = None, arch: str = "unet") -> Plan:
    """Check, fingerprint and plan a dataset; write ``fingerprint.json`` and ``plans.json`` to ``out_dir``.

    A dataset with any problem is refused with one :class:`Seg3dError` listing them all. The fingerprint is
    reused from ``out_dir/fingerprint.json`` while the dataset's files are unchanged.
    ``gpu_memory_gb`` replaces the preset's memory budget; ``arch`` is the architecture the memory estimate
    sizes patch and batch for (train with the same ``--arch``).
    """
    chosen = load_preset(preset, gpu_memory_gb)  # a bad preset or architecture fails before any file is read
    _check_arch(arch)
    out = Path(out_dir)
    problems, fp = scan_dataset(dataset_dir, workers=workers, progress=progress,
                                cache_path=PlanFolder(out).fingerprint_json)
    if fp is None:
        raise problems_error(problems, Path(dataset_dir))
    plan = plan_from_fingerprint(fp, chosen, progress=progress, arch=arch)
    folder = PlanFolder(out)
    plan.save(folder.plans_json)
    # where the data lives (beside the plan, not in it), so `seg3d train PLAN_DIR` can find the cases
    folder.record_dataset(dataset_dir)
    return plan
