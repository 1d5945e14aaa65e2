"""`seg3d summary`: what a model folder learned, fold by fold, and which model to predict with.

Readers are deliberately tolerant: a fold still training, a missing log or an older summary format gives a
"–" and a note, never a crash. Fold validation summaries are read in the format ``evaluate_folder`` writes
(``per_class``/``cases``) and in nnU-Net's style (``mean``/``metric_per_case`` keyed by label value).

Cross-validation (CV) Dice pools every validation case of every fold (each case is validated exactly once),
as nnU-Net's CV summary does; when only per-fold means exist, it is the case-weighted mean of fold means.
Comparing models: the ensemble of several models is scored from the probabilities the fold validation keeps
(``fold_K/validation/<case>.npz``): averaged per case, argmax, Dice against the reference, pooled as the CV Dice.
Where they are missing (older models, or cases too large to keep), the summary says so instead of averaging
Dice values (the mean of Dice values is not the Dice of averaged probabilities).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from seg3d.atomic import write_json_atomic, write_text_atomic
from seg3d.core.model_folder import ModelFolder
from seg3d.errors import Seg3dError
from seg3d.evaluation.evaluate import list_label_files
from seg3d.evaluation.metrics import case_metrics
from seg3d.io.image import read_image
from seg3d.io.layout import load_dataset


def _num(v) -> float | None:
    if isinstance(v, dict):
        for k in ("dice", "Dice", "dice_mean", "mean"):
            if k in v:
                return _num(v[k])
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _by_name(d: dict, value_to_name: dict[int, str]) -> dict[str, float | None]:
    """Keys that are label values ("1") become class names; names stay names."""
    out = {}
    for k, v in d.items():
        key = str(k)
        name = value_to_name.get(int(key)) if key.lstrip("-").isdigit() else key
        if name is None or name == "background" or key == "0":
            continue
        out[name] = _num(v)
    return out


def read_validation(path: Path, value_to_name: dict[int, str]) -> dict:
    """``{"dice": {class: mean}, "cases": {case: {class: dice}}, "n": cases}`` from a fold's summary.json."""
    obj = ModelFolder.read_json(path) or {}
    cases: dict[str, dict] = {}
    raw_cases = obj.get("cases") or obj.get("metric_per_case") or obj.get("per_case") or []
    if isinstance(raw_cases, dict):
        raw_cases = [{"case_id": k, **(v if isinstance(v, dict) else {})} for k, v in raw_cases.items()]
    for i, c in enumerate(raw_cases if isinstance(raw_cases, list) else []):
        if not isinstance(c, dict):
            continue
        cid = c.get("case_id") or c.get("case") or Path(str(c.get("reference_file", f"case_{i}"))).name
        per = c.get("classes") or c.get("metrics") or c.get("dice") or \
            {k: v for k, v in c.items() if k not in ("case_id", "case")}
        if isinstance(per, dict):
            cases[str(cid)] = {k: v for k, v in _by_name(per, value_to_name).items()}
    means: dict[str, float | None] = {}
    if cases:  # per-case values are the ground truth of any stored mean
        names = sorted({n for c in cases.values() for n in c})
        means = {n: _mean([c.get(n) for c in cases.values()]) for n in names}
    else:
        raw_mean = obj.get("per_class") or obj.get("mean") or obj.get("dice_per_class") or obj.get("per_class_dice")
        if isinstance(raw_mean, dict):
            means = _by_name(raw_mean, value_to_name)
    n = len(cases) or obj.get("num_cases") or obj.get("n_cases")
    return {"dice": means, "cases": cases, "n": n if isinstance(n, int) else None}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def read_training_log(path: Path) -> dict:
    """Epochs and training time from a fold's ``log.csv`` (``ModelFolder.training_log``; columns named epoch /
    *time* / *elapsed*), if present."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    if not rows:
        return {}
    out: dict = {"epochs": len(rows)}
    cols = list(rows[0])
    ep = next((c for c in cols if c.strip().lower() == "epoch"), None)
    if ep is not None:
        vals = [_num(r.get(ep)) for r in rows]
        vals = [v for v in vals if v is not None]
        if vals:
            out["epochs"] = int(max(vals)) + (1 if min(vals) == 0 else 0)
    elapsed = next((c for c in cols if "elapsed" in c.lower() or "wall" in c.lower()), None)
    per_epoch = next((c for c in cols if c.lower() in ("epoch_time_s", "epoch_time", "time_s", "duration_s",
                                                       "seconds", "time")), None)
    if elapsed is not None:
        vals = [_num(r.get(elapsed)) for r in rows]
        vals = [v for v in vals if v is not None]
        out["training_time_s"] = max(vals) if vals else None
    elif per_epoch is not None:
        vals = [_num(r.get(per_epoch)) for r in rows]
        out["training_time_s"] = sum(v for v in vals if v is not None)
    return out


def read_postprocessing(model_dir: Path, value_to_name: dict[int, str]) -> dict[str, str]:
    """Per-class decision from ``postprocessing.json``, as ``on``/``off`` (tolerant of its exact format)."""
    obj = ModelFolder.read_json(ModelFolder(model_dir).postprocessing_json)
    if obj is None:
        return {}
    out = {}
    if isinstance(obj.get("classes"), list) and isinstance(obj.get("evidence"), dict):  # seg3d.postprocessing
        on = {int(v) for v in obj["classes"] if str(v).isdigit()}
        for v, name in value_to_name.items():
            ev = obj["evidence"].get(str(v))
            detail = f" (CV Dice {ev['dice_before']:.4f} → {ev['dice_after']:.4f})" if isinstance(ev, dict) and \
                _num(ev.get("dice_before")) is not None and _num(ev.get("dice_after")) is not None else ""
            out[name] = ("on" if v in on else "off") + detail
        return out
    raw = obj.get("per_class") or obj.get("classes") or obj.get("decisions") or obj
    if isinstance(raw, list):  # a list of class values/names the rule applies to
        for name in value_to_name.values():
            out[name] = "off"
        for v in raw:
            name = value_to_name.get(int(v)) if str(v).isdigit() else str(v)
            if name:
                out[name] = "on"
        return out
    if not isinstance(raw, dict):
        return {}
    for k, v in raw.items():
        key = str(k)
        name = value_to_name.get(int(key)) if key.isdigit() else key
        if name is None or name not in value_to_name.values():
            continue
        flag = v.get("apply", v.get("enabled", v.get("remove_small_components"))) if isinstance(v, dict) else v
        out[name] = "on" if flag is True else "off" if flag is False else str(flag)
    return out


def _references(model_dir: Path) -> dict[str, Path]:
    """Reference label files of the training dataset the model folder records, if present."""

    ddir = ModelFolder(model_dir).dataset_dir()
    if not ddir:
        return {}
    try:
        ds = load_dataset(ddir)
    except Seg3dError:
        return {}
    return {c.case_id: c.label for c in ds.cases if c.label is not None and c.label.is_file()}


def _dice_by_name(pred, ref, value_to_name: dict[int, str]) -> dict[str, float | None]:
    """Dice per class name of label map ``pred`` against the reference image ``ref`` (None where undefined)."""

    m = case_metrics(pred, ref.array, ref.geometry.spacing_zyx, list(value_to_name), surface=False)
    return {value_to_name[v]: (None if math.isnan(x.dice) else x.dice) for v, x in m.items()}


def dice_from_predictions(vdir: Path, refs: dict[str, Path], value_to_name: dict[int, str]) -> dict:
    """Fold validation Dice computed from its saved label maps (when no summary.json was written)."""

    cases = {}
    for cid, pred_path in list_label_files(vdir, "validation").items():
        if cid not in refs:
            continue
        pred, ref = read_image(pred_path), read_image(refs[cid])
        if ref.geometry.mismatches(pred.geometry):
            raise Seg3dError("validation prediction is not on its reference's grid", pred_path)
        cases[cid] = _dice_by_name(pred.array, ref, value_to_name)
    means = {n: _mean([c.get(n) for c in cases.values()]) for n in value_to_name.values()}
    return {"dice": means, "cases": cases, "n": len(cases)}


def _labels(model_dir: Path) -> dict[str, int]:
    plans = ModelFolder.read_json(ModelFolder(model_dir).plans_json) or {}
    labels = plans.get("labels")
    if isinstance(labels, dict):
        try:
            return {str(k): int(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            pass
    return {}


def summarize_model(model_dir: str | Path) -> dict:
    """Folds, CV Dice per class, post-processing, epochs and time of one model folder."""
    folder = ModelFolder(model_dir).require()
    model_dir = folder.path
    fold_dirs = folder.fold_dirs()
    if not fold_dirs:
        raise Seg3dError("no fold_K/ folders: is this a seg3d model folder?", model_dir)
    labels = _labels(model_dir)
    value_to_name = {v: n for n, v in labels.items() if v != 0}
    info = ModelFolder.read_json(folder.model_json) or {}
    name = " ".join(str(info[k]) for k in ("config", "arch") if info.get(k)) or model_dir.name
    notes, folds, pooled, refs, partial = [], [], {}, None, False
    for fold, d in fold_dirs:
        entry: dict = {"fold": fold, "dice": {}, "mean_dice": None, "n_cases": None}
        vpath, vdir = folder.validation_summary(fold), folder.validation_dir(fold)
        val = read_validation(vpath, value_to_name) if vpath.is_file() else None
        if val is None and vdir.is_dir() and value_to_name:
            refs = _references(model_dir) if refs is None else refs
            val = dice_from_predictions(vdir, refs, value_to_name) if refs else None
            if val is not None and not val["cases"]:
                val = None
        if val is not None:
            entry.update(dice=val["dice"], mean_dice=_mean(val["dice"].values()), n_cases=val["n"])
            if fold != "all":  # trained on everything: its "validation" is not cross-validation
                partial = partial or not val["cases"]
                pooled.update({f"{d.name}/{k}": v for k, v in val["cases"].items()})
        else:
            notes.append(f"{d.name}: no validation/summary.json (training not finished?)")
        entry.update(read_training_log(folder.training_log(fold)))
        folds.append(entry)
    classes = list(value_to_name.values()) or sorted({c for f in folds for c in f["dice"]})
    cv_folds = [f for f in folds if f["fold"] != "all" and f["dice"]]
    if pooled and not partial:
        cv = {c: _mean([case.get(c) for case in pooled.values()]) for c in classes}
    else:
        cv = {}
        for c in classes:
            pairs = [(f["dice"].get(c), f.get("n_cases") or 1) for f in cv_folds if f["dice"].get(c) is not None]
            cv[c] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None
    if len(cv_folds) < 5:
        notes.append(f"cross-validation covers {len(cv_folds)} fold(s) with validation results; "
                     "the CV Dice is over those folds' validation cases only")
    return {"name": name, "model_dir": str(model_dir), "classes": classes, "folds": folds,
            "cv": {"dice": cv, "mean_dice": _mean(cv.values()), "n_cases": len(pooled) or None,
                   "case_ids": sorted(k.split("/", 1)[1] for k in pooled)},
            "postprocessing": read_postprocessing(model_dir, value_to_name), "notes": notes}


def summarize_models(model_dirs) -> dict:
    """Summaries of several model folders and a recommendation (best CV foreground-mean Dice)."""
    models = [summarize_model(d) for d in model_dirs]
    scored = [m for m in models if m["cv"]["mean_dice"] is not None]
    rec = []
    if not scored:
        rec.append("No cross-validation results yet: nothing to recommend.")
    else:
        best = max(scored, key=lambda m: m["cv"]["mean_dice"])
        rec.append(f"Use {best['name']} ({best['model_dir']}): CV mean Dice {best['cv']['mean_dice']:.4f}.")
        for m in scored:
            if m is not best:
                diff = best["cv"]["mean_dice"] - m["cv"]["mean_dice"]
                rec.append(f"  vs {m['name']}: {m['cv']['mean_dice']:.4f} ({diff:+.4f} for the recommended model"
                           f"{'; within noise, prefer the cheaper model if it is faster' if diff < 0.002 else ''}).")
        if len({tuple(m["cv"]["case_ids"]) for m in scored}) > 1:
            rec.append("Caution: the models were cross-validated on different cases; the comparison is not "
                       "paired.")
        ensemble = None
        if len(scored) > 1:
            ensemble, why = ensemble_cv([Path(m["model_dir"]) for m in scored])
            if ensemble is None:
                rec.append(f"Ensemble of these models: not scored ({why}); averaging the models' Dice values "
                           "would not be an honest estimate.")
            else:
                gain = ensemble["mean_dice"] - best["cv"]["mean_dice"]
                verdict = ("predict with the ensemble (all these model folders)" if gain > 0.002 else
                           "the ensemble is not worth its extra prediction time")
                rec.append(f"Ensemble of the {len(scored)} models (averaged probabilities, {ensemble['n_cases']} "
                           f"CV cases): mean Dice {ensemble['mean_dice']:.4f} ({gain:+.4f} vs the best single "
                           f"model): {verdict}.")
    return {"models": models, "recommendation": rec, "ensemble": ensemble}


def ensemble_cv(model_dirs: list[Path]) -> tuple[dict | None, str]:
    """CV Dice of the models' averaged validation probabilities: ``({"dice", "mean_dice", "n_cases"}, "")`` or
    ``(None, why not)``. Needs every model to have ``<case>.npz`` for the same validation cases of each fold."""
    import numpy as np


    labels = _labels(model_dirs[0])
    if not labels or any(_labels(d) != labels for d in model_dirs[1:]):
        return None, "the models do not share the same labels"
    values = sorted(labels.values())
    value_to_name = {v: n for n, v in labels.items() if v != 0}
    refs = _references(model_dirs[0])
    per_model = []
    for d in model_dirs:
        folder = ModelFolder(d)
        found = {f"{fd.name}/{p.stem}": p for fold, fd in folder.fold_dirs() if fold != "all"
                 for p in sorted(folder.validation_dir(fold).glob("*.npz"))}
        per_model.append(found)
    common = set(per_model[0]).intersection(*per_model[1:])
    if not common or any(set(m) != common for m in per_model):
        return None, "the cross-validation probabilities (fold_K/validation/<case>.npz) are missing or cover " \
                     "different cases"
    cases = {}
    for key in sorted(common):
        cid = key.split("/", 1)[1]
        if cid not in refs:
            return None, f"no reference label for validation case {cid}"
        probs = None
        for m in per_model:
            with np.load(m[key]) as z:
                p = z["probabilities"].astype(np.float32)
            probs = p if probs is None else probs + p
        ref = read_image(refs[cid])
        if probs.shape[1:] != ref.array.shape:
            return None, f"the probabilities of {key} are not on its reference's grid"
        pred = np.asarray(values, dtype=np.int64)[probs.argmax(0)]
        cases[key] = _dice_by_name(pred, ref, value_to_name)
    dice = {n: _mean([c.get(n) for c in cases.values()]) for n in value_to_name.values()}
    return {"dice": dice, "mean_dice": _mean(dice.values()), "n_cases": len(cases)}, ""


def _f(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def summary_markdown(res: dict) -> str:
    L = ["# seg3d model summary", ""]
    for m in res["models"]:
        cls = m["classes"]
        L += [f"## {m['name']}", "", f"`{m['model_dir']}`", "",
              "| fold | " + " | ".join(cls) + " | mean | epochs | training time | progress |",
              "|---|" + "---|" * (len(cls) + 4)]
        for f in m["folds"]:
            t = f.get("training_time_s")
            prog = ModelFolder(m["model_dir"]).progress_plot(f["fold"])
            link = f"[progress.png]({prog})" if prog.is_file() else "–"
            L.append(f"| {f['fold']} | " + " | ".join(_f(f["dice"].get(c)) for c in cls) +
                     f" | {_f(f['mean_dice'])} | {f.get('epochs', '–')} | "
                     f"{'–' if t is None else f'{t / 60:.1f} min'} | {link} |")
        L.append("| **CV** | " + " | ".join(_f(m["cv"]["dice"].get(c)) for c in cls) +
                 f" | **{_f(m['cv']['mean_dice'])}** | | | |")
        if m["postprocessing"]:
            L.append("| post-processing | " + " | ".join(m["postprocessing"].get(c, "–") for c in cls) +
                     " | | | | |")
        L += [""] + [f"- note: {n}" for n in m["notes"]] + [""]
    ens = res.get("ensemble")
    if ens:
        L += ["## Ensemble of the models (cross-validation)", "",
              "| " + " | ".join(ens["dice"]) + " | mean |", "|" + "---|" * (len(ens["dice"]) + 1),
              "| " + " | ".join(_f(v) for v in ens["dice"].values()) + f" | **{_f(ens['mean_dice'])}** |", ""]
    L += ["## Recommendation", ""] + [f"{line}" for line in res["recommendation"]] + [""]
    return "\n".join(L)


def write_summary(res: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "summary.json", res)
    write_text_atomic(out_dir / "summary.md", summary_markdown(res))
    return [out_dir / "summary.json", out_dir / "summary.md"]
