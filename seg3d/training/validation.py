"""Validation: pseudo-Dice on fixed validation patches every epoch, full-volume prediction at the end of a fold.

Pseudo-Dice pools true/false positives over all validation patches (one number per class, as nnU-Net's), so a
class absent from a patch neither helps nor hurts. The end-of-fold validation uses the inference Predictor —
the very preprocessing, sliding window and export that ``seg3d predict`` uses — writes
``fold_K/validation/<case><ending>`` with the same header-preserving writer as ``seg3d predict`` and Dice per case and class to
``fold_K/validation/summary.json`` (the CV evidence for post-processing and ``seg3d summary``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from seg3d.atomic import write_json_atomic
from seg3d.core.model_folder import ModelFolder
from seg3d.core.settings import PredictSettings
from seg3d.evaluation.metrics import case_metrics
from seg3d.inference.predictor import Predictor
from seg3d.inference.stages import write_probabilities
from seg3d.io.layout import load_dataset, read_case_label
from seg3d.io.sources import CaseSource
from seg3d.io.writers import write_mask
from seg3d.progress import LogFn, ProgressFn, log_info, report


def confusion_counts(logits, target, num_classes: int):
    """Per foreground class (tp, fp, fn) of the argmax of ``logits`` (B, K, ...) vs ``target`` (B, 1, ...)."""

    pred = logits.argmax(1)
    ref = target[:, 0].to(pred.device)
    out = torch.zeros((num_classes - 1, 3), dtype=torch.float64)
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        out[c - 1, 0] = (p & r).sum().item()
        out[c - 1, 1] = (p & ~r).sum().item()
        out[c - 1, 2] = (~p & r).sum().item()
    return out


def dice_from_counts(counts) -> list[float]:
    """Dice per class from pooled (tp, fp, fn); NaN where the class is in neither prediction nor reference."""
    out = []
    for tp, fp, fn in counts.tolist():
        den = 2 * tp + fp + fn
        out.append(2 * tp / den if den > 0 else math.nan)
    return out


def validate_fold(model_dir: Path, fold: int | str, val_ids: list[str], dataset_dir: Path, device: str,
                  tta: bool = True, progress: ProgressFn | None = None, log: LogFn = log_info,
                  precision: str = "auto") -> dict:
    """Predict the fold's held-out cases from ``checkpoint_final.pt`` and score them (Dice per case and class)."""

    t0 = time.perf_counter()
    folder = ModelFolder(model_dir)
    predictor = Predictor(folder, PredictSettings(folds=(str(fold),), device=device, tta=tta, postprocess=False,
                                                  precision=precision))
    plan = predictor.plan
    names = {v: k for k, v in plan.labels.items()}
    fg_values = [v for v in plan.label_values if v != 0]
    ds = load_dataset(dataset_dir)
    by_id = {c.case_id: c for c in ds.cases}
    out_dir = folder.validation_dir(fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict] = {}
    for i, cid in enumerate(val_ids):
        case = by_id[cid]
        source = CaseSource.from_case(case)
        data, geometry = source.read(plan.num_channels)
        keep = plan.num_classes * int(np.prod(data.shape[1:])) <= MAX_SAVED_PROBABILITIES
        pred = predictor.predict_case(data, geometry, return_probabilities=keep)
        labels = pred.labels if keep else pred
        write_mask(labels, geometry, out_dir / f"{cid}{ds.file_ending}", source)
        if keep:  # what `seg3d summary` averages across models to score their ensemble
            write_probabilities(out_dir / f"{cid}.npz", pred.probabilities, plan.label_values)
        ref, _ = read_case_label(case)
        m = case_metrics(labels, ref, geometry.spacing_zyx, plan.label_values, surface=False)
        cases[cid] = {"classes": {names[v]: _clean(m[v].dice) for v in fg_values}}
        report(progress, i + 1, len(val_ids), f"validation {cid}")
    per_class = {}
    for v in fg_values:
        vals = [c["classes"][names[v]] for c in cases.values() if c["classes"][names[v]] is not None]
        per_class[names[v]] = float(np.mean(vals)) if vals else None
    defined = [d for d in per_class.values() if d is not None]
    summary = {"fold": str(fold), "n_cases": len(cases), "checkpoint": "final", "tta": tta,
               "per_class": per_class, "mean_foreground_dice": float(np.mean(defined)) if defined else None,
               "cases": cases, "seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(folder.validation_summary(fold), summary)
    log(f"fold {fold} validation on {len(cases)} held-out case(s): mean foreground Dice "
        f"{_f(summary['mean_foreground_dice'])} (" +
        ", ".join(f"{k} {_f(v)}" for k, v in per_class.items()) + f") in {summary['seconds']:.1f} s")
    return summary


# probabilities of a validation case are kept (float16 .npz) up to this many values (classes x voxels): 64 M
# values = 128 MB, a hippocampus case is ~0.2 M; large multi-class CTs are skipped rather than filling the disk
MAX_SAVED_PROBABILITIES = 64 * 1024 ** 2


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
