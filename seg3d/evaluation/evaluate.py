"""Evaluate a folder of predictions against a folder of references: match, check geometry, measure, report.

Geometry is checked for every pair from the headers *before* any voxel is read, so a folder of predictions
written on the wrong grid fails in seconds with every bad case named, instead of producing wrong numbers.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from seg3d.errors import Seg3dError
from seg3d.evaluation.metrics import CONVENTIONS, as_label_array, case_metrics_detail
from seg3d.evaluation.report import aggregate, nan_to_none, write_reports
from seg3d.io.image import SUPPORTED_ENDINGS, ending_of, read_header, read_image
from seg3d.io.layout import read_dataset_labels as load_labels
from seg3d.parallel import map_cases
from seg3d.progress import ProgressFn


def list_label_files(folder: str | Path, what: str) -> dict[str, Path]:
    """``case_id -> file`` for the image files of a folder (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Seg3dError(f"{what} folder not found", folder)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        e = ending_of(p.name)
        if p.name.startswith(".") or e is None or not p.is_file():
            continue
        cid = p.name[: -len(e)]
        if cid in out:
            raise Seg3dError(f"case '{cid}' appears twice ({out[cid].name} and {p.name})", folder)
        out[cid] = p
    return out


def match_cases(pred_dir, gt_dir) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pairs ``(case_id, prediction, reference)``, reference cases without prediction, unmatched predictions."""
    refs = list_label_files(gt_dir, "reference")
    preds = list_label_files(pred_dir, "prediction")
    if not refs:
        raise Seg3dError(f"no reference label files ({', '.join(SUPPORTED_ENDINGS)}) found", gt_dir)
    pairs = [(cid, preds[cid], refs[cid]) for cid in refs if cid in preds]
    missing = [cid for cid in refs if cid not in preds]
    extra = [cid for cid in preds if cid not in refs]
    if not pairs:
        example = next(iter(refs.values())).name
        raise Seg3dError(f"no prediction matches any of the {len(refs)} reference case(s); predictions must be "
                         f"named like the references (e.g. {example})", pred_dir)
    return pairs, missing, extra


def check_geometry(pairs: list[tuple[str, Path, Path]]) -> None:
    """Every prediction on its reference's grid (size, spacing, origin, direction), else one error naming all."""

    bad = []
    for cid, pred, ref in pairs:
        diff = read_header(ref).geometry.mismatches(read_header(pred).geometry)
        if diff:
            bad.append(f"case '{cid}' ({pred}): " + "; ".join(diff))
    if bad:
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise Seg3dError(f"{len(bad)} prediction(s) are not on their reference's grid "
                         "(prediction != reference):\n  " + "\n  ".join(bad[:10]) + more)


def _evaluate_pair(cid: str, pred_path: Path, ref_path: Path, class_values: list[int] | None,
                   tolerance_mm: float) -> dict:
    """Worker: read one pair and measure it (top-level so process pools can pickle it)."""
    import numpy as np


    pred, ref = read_image(pred_path), read_image(ref_path)
    diff = ref.geometry.mismatches(pred.geometry)
    if diff:
        raise Seg3dError(f"case '{cid}': prediction is not on the reference's grid: " + "; ".join(diff), pred_path)
    try:
        p = as_label_array(pred.array, "prediction")
    except Seg3dError as e:
        raise Seg3dError(f"case '{cid}': {e}", pred_path) from None
    try:
        r = as_label_array(ref.array, "reference")
    except Seg3dError as e:
        raise Seg3dError(f"case '{cid}': {e}", ref_path) from None
    if class_values is None:
        values = sorted(({int(v) for v in np.unique(p)} | {int(v) for v in np.unique(r)}) - {0})
    else:
        values = class_values
    metrics, unk_p, unk_r = case_metrics_detail(p, r, ref.geometry.spacing_zyx, values, tolerance_mm)
    return {"case_id": cid, "prediction": str(pred_path), "reference": str(ref_path),
            "spacing_zyx": list(ref.geometry.spacing_zyx),
            "metrics": {v: m.to_dict() for v, m in metrics.items()},
            "unexpected_pred": sorted(unk_p), "unexpected_ref": sorted(unk_r)}


def _safe_pair(args) -> dict:
    try:
        return _evaluate_pair(*args)
    except Seg3dError as e:  # exceptions with custom __init__ do not survive pickling intact
        return {"error": str(e)}


def _run(pairs, class_values, tolerance_mm, workers: int, progress: ProgressFn | None) -> list[dict]:
    jobs = [(cid, p, r, class_values, tolerance_mm) for cid, p, r in pairs]
    if workers > 1 and len(jobs) > 2:
        # Import the metric stack once here so forked workers inherit it instead of each paying seconds for it.
        import monai.metrics.utils  # noqa: F401
        import torch  # noqa: F401
    results = map_cases(_safe_pair, jobs, workers, progress, message=lambda res: res.get("case_id", ""),
                        chunksize=1, serial_up_to=2)
    for res in results:
        if "error" in res:
            raise Seg3dError(res["error"])
    return results


def evaluate_folder(pred_dir, gt_dir, out_dir, labels: dict[str, int] | None = None, tolerance_mm: float = 1.0,
                    dataset_json: str | Path | None = None, images_dir: str | Path | None = None,
                    pictures: int = 10, workers: int | None = None, progress: ProgressFn | None = None,
                    model_dir: str | Path | None = None) -> dict:
    """Measure every prediction against its reference and write ``metrics.csv``, ``metrics.json``,
    ``report.md`` and ``pictures/`` to ``out_dir``. Returns the JSON content (NaN written as null).

    ``labels`` (name → value) or ``dataset_json`` name the classes; otherwise a ``dataset.json`` next to
    ``gt_dir`` (``labelsTr``/``labelsTs`` of a dataset) is used, else values found in the data.
    ``pictures``: montages for the N cases with the lowest foreground Dice (0: none, -1: all).
    ``model_dir``: the model that made the predictions; the report links its training curves
    (``fold_*/progress.png``).
    """

    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise Seg3dError(f"--tolerance-mm must be a finite number >= 0, got {tolerance_mm}")
    if model_dir is not None and not Path(model_dir).is_dir():
        raise Seg3dError("model folder not found (--model-dir: the model whose training curves to link)", model_dir)
    pairs, missing, extra = match_cases(pred_dir, gt_dir)
    labels_source = "given"
    if labels is None and dataset_json is not None:
        labels, labels_source = load_labels(dataset_json), str(dataset_json)
    elif labels is None and (Path(gt_dir).parent / "dataset.json").is_file():
        try:
            labels = load_labels(Path(gt_dir).parent / "dataset.json")
            labels_source = str(Path(gt_dir).parent / "dataset.json")
        except Seg3dError:
            labels = None
    if labels is None:
        labels_source = "label values found in the data"
    check_geometry(pairs)
    class_values = None if labels is None else [v for v in sorted(labels.values()) if v != 0]
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    results = _run(pairs, class_values, tolerance_mm, workers, progress)
    if labels is None:
        found = sorted({int(v) for r in results for v in r["metrics"]})
        labels = {"background": 0, **{f"label_{v}": v for v in found}}
    summary = aggregate(results, labels)
    summary.update({
        "prediction_dir": str(pred_dir), "reference_dir": str(gt_dir), "tolerance_mm": float(tolerance_mm),
        "labels": dict(labels), "labels_source": labels_source, "conventions": list(CONVENTIONS),
        "missing_predictions": missing, "unmatched_predictions": extra,
    })
    summary = write_reports(summary, Path(out_dir), images_dir=images_dir, pictures=pictures, model_dir=model_dir)
    return nan_to_none(summary)
