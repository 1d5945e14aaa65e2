"""Connected-component post-processing and its cross-validation decision.

The rule: per class, drop every connected component (26-connectivity) whose volume is below ``fraction`` of
that class's largest component (default 1/3), and optionally below an absolute volume in mm³; dropped voxels
become background. It removes the small false-positive islands a network scatters far from the organ, but
would also remove genuinely separate small parts (e.g. a second kidney lesion), which is why it is applied
per class only where it improved mean Dice on the cross-validation predictions.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.core.model_folder import ModelFolder
from seg3d.errors import Seg3dError
from seg3d.io.image import read_image
from seg3d.io.layout import load_dataset
from seg3d.progress import ProgressFn, report

# cc3d imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

DEFAULT_FRACTION = 1.0 / 3.0


def remove_small_components(labels: np.ndarray, class_values, fraction: float = DEFAULT_FRACTION,
                            min_volume_mm3: float = 0.0, spacing=None) -> np.ndarray:
    """``labels`` (label values) with small components of ``class_values`` set to 0 (a new array).

    ``spacing`` (array order, mm) is needed only for ``min_volume_mm3``.
    """
    import cc3d

    values = [int(v) for v in class_values if int(v) != 0]
    if not values or not labels.any():
        return labels.copy()
    if min_volume_mm3 > 0 and spacing is None:
        raise ValueError("min_volume_mm3 needs the voxel spacing")
    # one pass labels every class's components (cc3d separates touching components of different values)
    comps, n = cc3d.connected_components(labels, connectivity=26 if labels.ndim == 3 else 8,
                                         return_N=True)
    if n == 0:
        return labels.copy()
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    comp_class = np.zeros(n + 1, dtype=np.int64)
    comp_class[comps.ravel()] = labels.ravel()
    remove = np.zeros(n + 1, dtype=bool)
    voxel_mm3 = float(np.prod(spacing)) if spacing is not None else 1.0
    for v in values:
        ids = np.flatnonzero(comp_class == v)
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        largest = sizes[ids].max()
        small = sizes[ids] < fraction * largest
        if min_volume_mm3 > 0:
            small |= sizes[ids] * voxel_mm3 < min_volume_mm3
        remove[ids[small]] = True
    out = labels.copy()
    if remove.any():
        out[remove[comps]] = 0
    return out


@dataclass(frozen=True)
class PostprocessingRule:
    """Which classes (label values) get the component rule, with its parameters; MODEL_DIR/postprocessing.json."""

    classes: tuple[int, ...]
    fraction: float = DEFAULT_FRACTION
    min_volume_mm3: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)  # per-class CV Dice before/after

    def apply(self, labels: np.ndarray, spacing=None) -> np.ndarray:
        if not self.classes:
            return labels
        return remove_small_components(labels, self.classes, self.fraction, self.min_volume_mm3, spacing)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "fraction": self.fraction, "min_volume_mm3": self.min_volume_mm3,
                "evidence": self.evidence}

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PostprocessingRule:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise Seg3dError(f"malformed post-processing file ({type(e).__name__}: {e})", path) from None
        return cls.from_dict(d, path)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path | None = None) -> PostprocessingRule:
        """The rule ``postprocessing.json`` holds; ``where`` names the file in errors."""
        try:
            return cls(tuple(int(v) for v in d["classes"]), float(d.get("fraction", DEFAULT_FRACTION)),
                       float(d.get("min_volume_mm3", 0.0)), dict(d.get("evidence", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise Seg3dError(f"malformed post-processing file ({type(e).__name__}: {e})", where) from None


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (the case says nothing about the class)."""
    inter = np.count_nonzero(pred & ref)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    return float("nan") if total == 0 else 2.0 * inter / total


def score_case(pred: np.ndarray, ref: np.ndarray, class_values, fraction: float, min_volume_mm3: float,
               spacing) -> dict[int, tuple[float, float]]:
    """Per class: (Dice as predicted, Dice after the rule applied to that class)."""
    after = remove_small_components(pred, class_values, fraction, min_volume_mm3, spacing)
    return {int(v): (dice(pred == v, ref == v), dice(after == v, ref == v)) for v in class_values if v != 0}


def decide_from_pairs(pairs, class_values, fraction: float = DEFAULT_FRACTION, min_volume_mm3: float = 0.0,
                      workers: int = 2, progress: ProgressFn | None = None) -> PostprocessingRule:
    """Decide per class on (prediction path, reference path) pairs: keep the rule where mean Dice improves.

    The rule only ever turns voxels of class c into background, so each class's Dice depends only on whether
    the rule is applied to that class: the per-class decisions are independent.
    """

    pairs = list(pairs)
    if not pairs:
        raise Seg3dError("no cross-validation predictions to decide post-processing on")

    def one(pair):
        pred_p, ref_p = pair
        pred, ref = read_image(pred_p), read_image(ref_p)
        bad = pred.geometry.mismatches(ref.geometry)
        if bad:
            raise Seg3dError("prediction and reference are on different grids: " + "; ".join(bad), pred_p)
        return score_case(pred.array, ref.array, class_values, fraction, min_volume_mm3,
                          pred.geometry.spacing_zyx)

    scores: list[dict[int, tuple[float, float]]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, s in enumerate(pool.map(one, pairs)):
            scores.append(s)
            report(progress, i + 1, len(pairs), "post-processing decision")
    classes, evidence = [], {}
    for v in class_values:
        if v == 0:
            continue
        before = np.array([s[v][0] for s in scores], dtype=float)
        after = np.array([s[v][1] for s in scores], dtype=float)
        if np.all(np.isnan(before)):
            continue
        b, a = float(np.nanmean(before)), float(np.nanmean(after))
        evidence[str(v)] = {"dice_before": b, "dice_after": a, "cases": int(np.sum(~np.isnan(before)))}
        if a > b:
            classes.append(int(v))
    return PostprocessingRule(tuple(classes), fraction, min_volume_mm3, evidence)


def decide_postprocessing(model_dir: str | Path, dataset_dir: str | Path | None = None,
                          fraction: float = DEFAULT_FRACTION, min_volume_mm3: float = 0.0, workers: int = 2,
                          progress: ProgressFn | None = None, save: bool = True) -> PostprocessingRule:
    """Decide on the model folder's cross-validation predictions and store MODEL_DIR/postprocessing.json.

    Predictions: ``fold_K/validation/<case><ending>``; references: the dataset's label files (the dataset
    folder defaults to the one the model folder records, ``ModelFolder.dataset_dir()``).
    """

    folder = ModelFolder(model_dir)
    model_dir = folder.path
    plan = folder.load_plan()
    if dataset_dir is None:
        dataset_dir = folder.dataset_dir()
        if not dataset_dir:
            raise Seg3dError("the dataset folder is needed for the reference labels (give it explicitly)",
                             model_dir)
    dataset = load_dataset(dataset_dir)
    refs = {c.case_id: c.label for c in dataset.cases if c.label is not None}
    pairs = []
    for fold, _ in folder.fold_dirs():
        vdir = folder.validation_dir(fold)
        if not vdir.is_dir():
            continue
        for p in sorted(vdir.iterdir()):
            if p.name.endswith(dataset.file_ending) and not p.name.startswith("."):
                cid = p.name[: -len(dataset.file_ending)]
                if cid in refs:
                    pairs.append((p, refs[cid]))
    if not pairs:
        raise Seg3dError("no cross-validation predictions found in fold_*/validation/", model_dir)
    rule = decide_from_pairs(pairs, plan.label_values, fraction, min_volume_mm3, workers, progress)
    if save:
        rule.save(folder.postprocessing_json)
    return rule
