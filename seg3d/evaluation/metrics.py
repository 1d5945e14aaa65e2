"""Per-case, per-class segmentation metrics in physical units.

Overlap (Dice, IoU, volumes) comes from one confusion matrix over the label values, built slab by slab so
that a 512×512×800 CT never needs a full-size int64 temporary. Surface metrics use MONAI's edge extraction
and surface distances (``monai.metrics.utils.get_edge_surface_distance``, the same code behind
``HausdorffDistanceMetric`` and ``SurfaceDiceMetric``) with the voxel spacing in array order, computed once per
class on the bounding box of prediction ∪ reference (plus a one-voxel margin, which changes nothing: MONAI
crops the same way) so HD95 and NSD share one pair of distance sets instead of four.

Conventions (stated in every report, see :data:`CONVENTIONS`):

* both empty → Dice, IoU, HD95, NSD are NaN ("not applicable"), excluded from means, counted as
  ``n_both_empty``;
* reference empty, prediction not (a false-positive case) → Dice 0, IoU 0, NSD 0, HD95 NaN;
* reference not empty, prediction empty (a missed structure) → Dice 0, IoU 0, NSD 0, HD95 NaN;
* HD95 = max of the 95th percentiles (linear interpolation) of the two directed surface-distance sets
  (MONAI's definition); surfaces are the voxels removed by a 6-connected binary erosion;
* NSD at tolerance τ mm = (|pred-surface voxels within τ of ref surface| + |ref-surface voxels within τ of
  pred surface|) / (|pred surface| + |ref surface|) (MONAI ``SurfaceDiceMetric``, ``use_subvoxels=False``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from seg3d.errors import Seg3dError

# torch, MONAI and scipy imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

CONVENTIONS = (
    "Distances are in millimetres, using each image's voxel spacing (anisotropic spacing is honoured).",
    "Dice = 2|P∩R| / (|P|+|R|); IoU = |P∩R| / |P∪R|; volumes = voxel count × voxel volume (mm³).",
    ("HD95 = max of the 95th percentiles of the two directed surface-distance sets between surface voxels "
     "(MONAI HausdorffDistanceMetric(percentile=95)); surface = voxels removed by a 6-connected erosion."),
    ("NSD (normalised surface Dice) at tolerance τ = fraction of both surfaces lying within τ mm of the other "
     "surface (MONAI SurfaceDiceMetric, voxel-counted surfaces); a distance of exactly τ counts as within τ."),
    ("Reference and prediction both empty: Dice, IoU, HD95 and NSD are NaN (not applicable) and excluded from "
     "means; such cases are counted as 'both empty'."),
    ("Exactly one of them empty (missed structure, or false positive): Dice = IoU = NSD = 0 and included in "
     "means; HD95 is undefined (NaN), excluded from HD95 statistics and counted as 'HD95 undefined'."),
    ("Class means/medians/stds are over cases where the metric is defined; the foreground mean is the mean "
     "over classes of the class means (as nnU-Net's 'foreground_mean')."),
)


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case; ``status`` says which empty-mask convention applied."""

    dice: float
    iou: float
    hd95_mm: float
    nsd: float
    volume_pred_mm3: float
    volume_ref_mm3: float
    status: str  # "ok" | "both_empty" | "ref_empty" | "pred_empty"

    def to_dict(self) -> dict:
        return asdict(self)


def label_lut(class_values: list[int], max_value: int) -> np.ndarray:
    """Lookup value → compact index: background 0, classes 1..K, anything undeclared K+1."""
    k = len(class_values)
    lut = np.full(max_value + 1, k + 1, dtype=np.uint16 if k + 1 < 65535 else np.int32)
    lut[0] = 0
    for i, v in enumerate(class_values, start=1):
        if v <= max_value:
            lut[v] = i
    return lut


def as_label_array(arr: np.ndarray, what: str = "label map") -> np.ndarray:
    """Integer view of a label map; non-integer or negative values are an error a user can cause."""
    if arr.dtype.kind in "ui":
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise Seg3dError(f"{what} holds negative values")
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise Seg3dError(f"{what} holds non-integer values (is it a probability map?)")
        if arr.size and arr.min() < 0:
            raise Seg3dError(f"{what} holds negative values")
        return arr.astype(np.int64)
    raise Seg3dError(f"{what} has unsupported voxel type {arr.dtype}")


def _compact(arr: np.ndarray, class_values: list[int]) -> tuple[np.ndarray, set[int]]:
    """Compact class indices and the set of undeclared values found."""
    max_value = int(arr.max()) if arr.size else 0
    lut = label_lut(class_values, max(max_value, max(class_values, default=0)))
    idx = lut[arr]
    unknown: set[int] = set()
    k = len(class_values)
    if max_value > 0 and np.any(idx == k + 1):
        unknown = {int(v) for v in np.unique(arr[idx == k + 1])}
    return idx, unknown


def confusion_matrix(pred_idx: np.ndarray, ref_idx: np.ndarray, n: int, slab_voxels: int = 1 << 23) -> np.ndarray:
    """``cm[p, r]`` = voxels with predicted index p and reference index r, bounded memory."""
    cm = np.zeros((n, n), dtype=np.int64)
    p, r = pred_idx.reshape(pred_idx.shape[0], -1), ref_idx.reshape(ref_idx.shape[0], -1)
    step = max(1, slab_voxels // max(1, p.shape[1]))
    for s in range(0, p.shape[0], step):
        codes = p[s:s + step].astype(np.int64) * n + r[s:s + step]
        cm += np.bincount(codes.ravel(), minlength=n * n).reshape(n, n)
    return cm


def _union_box(a, b, shape, margin: int = 1) -> tuple[slice, ...]:
    boxes = [x for x in (a, b) if x is not None]
    return tuple(slice(max(0, min(bx[d].start for bx in boxes) - margin),
                       min(shape[d], max(bx[d].stop for bx in boxes) + margin)) for d in range(len(shape)))


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) pred→ref and ref→pred, with MONAI's edge and distance code."""
    import warnings

    import torch
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():  # MONAI's own call into a deprecated argument of itself
        warnings.simplefilter("ignore", FutureWarning)
        _, (d_pr, d_rp), _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(pred_mask)), torch.from_numpy(np.ascontiguousarray(ref_mask)),
            distance_metric="euclidean", spacing=[float(s) for s in spacing], use_subvoxels=False,
            symmetric=True, warn_empty=False)
    return d_pr.cpu().numpy().astype(np.float64), d_rp.cpu().numpy().astype(np.float64)


def hd95_nsd(d_pr: np.ndarray, d_rp: np.ndarray, tolerance_mm: float) -> tuple[float, float]:
    """HD95 and NSD from the two directed distance sets (both non-empty)."""
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    # MONAI returns float32 distances: a boundary voxel at exactly tau mm (2.4 -> 2.4000001) must still count
    tol = tolerance_mm * (1 + 1e-6) + 1e-9
    nsd = (int(np.sum(d_pr <= tol)) + int(np.sum(d_rp <= tol))) / (d_pr.size + d_rp.size)
    return hd95, nsd


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing, class_values, tolerance_mm: float = 1.0,
                 surface: bool = True) -> dict[int, ClassMetrics]:
    """Metrics for each label value in ``class_values`` (background 0 is skipped).

    ``pred`` and ``ref`` are integer label maps on the same grid, ``spacing`` is in the same array order
    (``Geometry.spacing_zyx`` for arrays read with SimpleITK). ``surface=False`` skips HD95/NSD (NaN).
    """
    return case_metrics_detail(pred, ref, spacing, class_values, tolerance_mm, surface)[0]


def case_metrics_detail(pred, ref, spacing, class_values, tolerance_mm: float = 1.0,
                        surface: bool = True) -> tuple[dict[int, ClassMetrics], set[int], set[int]]:
    """:func:`case_metrics` plus the undeclared values found in the prediction and the reference."""
    from scipy.ndimage import find_objects

    pred, ref = as_label_array(np.asarray(pred), "prediction"), as_label_array(np.asarray(ref), "reference")
    if pred.shape != ref.shape:
        raise Seg3dError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match a {pred.ndim}D array")
    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise Seg3dError(f"tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    values = [int(v) for v in class_values if int(v) != 0]
    k = len(values)
    pidx, unknown_pred = _compact(pred, values)
    ridx, unknown_ref = _compact(ref, values)
    cm = confusion_matrix(pidx, ridx, k + 2)
    voxel_mm3 = float(np.prod(spacing))
    pboxes = find_objects(pidx, max_label=k) if surface else []
    rboxes = find_objects(ridx, max_label=k) if surface else []
    out: dict[int, ClassMetrics] = {}
    nan = float("nan")
    for i, v in enumerate(values, start=1):
        tp = int(cm[i, i])
        n_pred, n_ref = int(cm[i, :].sum()), int(cm[:, i].sum())
        vols = (n_pred * voxel_mm3, n_ref * voxel_mm3)
        if n_pred == 0 and n_ref == 0:
            out[v] = ClassMetrics(nan, nan, nan, nan, *vols, "both_empty")
            continue
        if n_pred == 0 or n_ref == 0:
            out[v] = ClassMetrics(0.0, 0.0, nan, 0.0, *vols, "pred_empty" if n_pred == 0 else "ref_empty")
            continue
        dice = 2.0 * tp / (n_pred + n_ref)
        iou = tp / (n_pred + n_ref - tp)
        hd95 = nsd = nan
        if surface:
            box = _union_box(pboxes[i - 1], rboxes[i - 1], pred.shape)
            d_pr, d_rp = surface_distances(pidx[box] == i, ridx[box] == i, spacing)
            hd95, nsd = hd95_nsd(d_pr, d_rp, tolerance_mm)
        out[v] = ClassMetrics(dice, iou, hd95, nsd, *vols, "ok")
    return out, unknown_pred, unknown_ref


def summarize(values: list[float]) -> dict:
    """Mean, median, std (population) and count over the defined (non-NaN) values."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()), "n": int(arr.size)}
