"""Turn per-case metrics into the evaluation outputs: per-class summary, CSV, JSON and a Markdown report."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from seg3d.atomic import write_json_atomic, write_text_atomic
from seg3d.core.model_folder import ModelFolder
from seg3d.evaluation.figures import case_pictures, dice_boxplot
from seg3d.evaluation.metrics import summarize


def nan_to_none(x):
    """``x`` with every float NaN (nested in dicts and lists) replaced by ``None``: valid JSON (``null``)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x

METRICS = ("dice", "iou", "hd95_mm", "nsd")
CSV_COLUMNS = ("case_id", "class", "label", "dice", "iou", "hd95_mm", "nsd", "volume_pred_mm3", "volume_ref_mm3",
               "status")
_NAN = float("nan")


def _empty_class() -> dict:
    return {"dice": _NAN, "iou": _NAN, "hd95_mm": _NAN, "nsd": _NAN, "volume_pred_mm3": 0.0,
            "volume_ref_mm3": 0.0, "status": "both_empty"}


def _nanmean(values) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else _NAN


def aggregate(results: list[dict], labels: dict[str, int]) -> dict:
    """Per-case records keyed by class name, per-class statistics and the foreground mean."""
    fg = {name: v for name, v in labels.items() if v != 0}
    cases, unexpected = [], {}
    for r in results:
        classes = {name: dict(r["metrics"].get(v) or r["metrics"].get(str(v)) or _empty_class())
                   for name, v in fg.items()}
        cases.append({"case_id": r["case_id"], "prediction": r["prediction"], "reference": r["reference"],
                      "foreground_dice": _nanmean(c["dice"] for c in classes.values()), "classes": classes})
        if r.get("unexpected_pred") or r.get("unexpected_ref"):
            unexpected[r["case_id"]] = {"prediction": r.get("unexpected_pred", []),
                                        "reference": r.get("unexpected_ref", [])}
    per_class = {}
    for name, v in fg.items():
        rows = [c["classes"][name] for c in cases]
        entry: dict = {"label": v}
        for m in METRICS:
            key = m.replace("_mm", "")
            s = summarize([row[m] for row in rows])
            entry.update({f"{key}_mean": s["mean"], f"{key}_median": s["median"], f"{key}_std": s["std"],
                          f"{key}_n": s["n"]})
        entry["volume_ref_mean_mm3"] = summarize([row["volume_ref_mm3"] for row in rows])["mean"]
        entry["volume_pred_mean_mm3"] = summarize([row["volume_pred_mm3"] for row in rows])["mean"]
        entry["n_cases"] = len(rows)
        for status in ("both_empty", "pred_empty", "ref_empty"):
            entry[f"n_{status}"] = sum(row["status"] == status for row in rows)
        entry["n_hd95_undefined"] = entry["n_pred_empty"] + entry["n_ref_empty"]
        per_class[name] = entry
    foreground = {key: _nanmean(per_class[n][f"{key}_mean"] for n in per_class)
                  for key in ("dice", "iou", "hd95", "nsd")}
    return {"num_cases": len(cases), "per_class": per_class, "foreground_mean": foreground, "cases": cases,
            "unexpected_labels": unexpected}


def _csv_value(v) -> str:
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else repr(v)
    return str(v)


def metrics_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for case in summary["cases"]:
        for name, m in case["classes"].items():
            w.writerow([case["case_id"], name, summary["labels"][name]] +
                       [_csv_value(m[k]) for k in CSV_COLUMNS[3:]])
    return buf.getvalue()


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def markdown_report(summary: dict) -> str:
    """A human-readable report: inputs, warnings, per-class table, pictures, per-case table, conventions."""
    L = ["# seg3d evaluation report", ""]
    L += [f"- predictions: `{summary['prediction_dir']}`", f"- references: `{summary['reference_dir']}`",
          f"- cases evaluated: {summary['num_cases']}", f"- labels: {summary['labels_source']}",
          f"- surface Dice tolerance: {summary['tolerance_mm']:g} mm", ""]
    warn = []
    if summary["missing_predictions"]:
        ids = summary["missing_predictions"]
        warn.append(f"**{len(ids)} reference case(s) have no prediction and are not in the statistics:** "
                    + ", ".join(f"`{i}`" for i in ids[:30]) + (" …" if len(ids) > 30 else ""))
    if summary["unmatched_predictions"]:
        ids = summary["unmatched_predictions"]
        warn.append(f"{len(ids)} prediction(s) have no reference and were ignored: "
                    + ", ".join(f"`{i}`" for i in ids[:30]) + (" …" if len(ids) > 30 else ""))
    for cid, u in list(summary["unexpected_labels"].items())[:30]:
        warn.append(f"case `{cid}` holds undeclared label values (treated as background): prediction "
                    f"{u['prediction'] or '–'}, reference {u['reference'] or '–'}")
    if warn:
        L += ["## Warnings", ""] + [f"- {w}" for w in warn] + [""]
    L += ["## Per class", "",
          ("| class | label | Dice mean ± std | Dice median | IoU mean | HD95 mean (mm) | HD95 median (mm) | "
           "NSD mean | ref. volume mean (mm³) | pred. volume mean (mm³) | missed | false pos. | both empty |"),
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in summary["per_class"].items():
        L.append(f"| {_md_escape(name)} | {c['label']} | {_f(c['dice_mean'])} ± {_f(c['dice_std'])} | "
                 f"{_f(c['dice_median'])} | {_f(c['iou_mean'])} | {_f(c['hd95_mean'], 2)} | "
                 f"{_f(c['hd95_median'], 2)} | {_f(c['nsd_mean'])} | {_f(c['volume_ref_mean_mm3'], 0)} | "
                 f"{_f(c['volume_pred_mean_mm3'], 0)} | {c['n_pred_empty']} | {c['n_ref_empty']} | "
                 f"{c['n_both_empty']} |")
    fg = summary["foreground_mean"]
    L += ["", (f"**Foreground mean** (mean of class means): Dice {_f(fg['dice'])}, IoU {_f(fg['iou'])}, "
               f"HD95 {_f(fg['hd95'], 2)} mm, NSD {_f(fg['nsd'])}."), ""]
    pics = summary.get("pictures", {})
    if pics.get("boxplot"):
        L += ["## Pictures", "", f"![Dice per class]({pics['boxplot']})", ""]
    if pics.get("cases"):
        L += [(f"Montages of the {len(pics['cases'])} case(s) with the lowest foreground Dice (reference: solid "
               "green, prediction: dashed magenta; slices through the reference's centre of mass):"), ""]
        for cid, rel in pics["cases"].items():
            L.append(f"- [{cid}]({rel})")
        L.append("")
    if pics.get("training"):
        L += ["## Training curves", "", "Loss, pseudo-Dice and learning rate per epoch of the model that made these "
              "predictions:", ""]
        L += [f"![fold {fold}]({rel})" for fold, rel in pics["training"].items()] + [""]
    names = list(summary["per_class"])
    L += ["## Per case (Dice)", "", "| case | foreground Dice | " + " | ".join(_md_escape(n) for n in names) + " |",
          "|---|---|" + "---|" * len(names)]
    for case in sorted(summary["cases"], key=lambda c: _sort_key(c["foreground_dice"])):
        cells = [_f(case["classes"][n]["dice"]) for n in names]
        link = pics.get("cases", {}).get(case["case_id"])
        cid = f"[{case['case_id']}]({link})" if link else case["case_id"]
        L.append(f"| {cid} | {_f(case['foreground_dice'])} | " + " | ".join(cells) + " |")
    L += ["", "## Conventions", ""] + [f"- {c}" for c in summary["conventions"]]
    L += ["", "## Files", "", "- `metrics.csv`: one row per case and class", "- `metrics.json`: everything above",
          ""]
    return "\n".join(L)


def _sort_key(v) -> float:
    """Worst first; cases with nothing to measure (NaN) last."""
    return math.inf if v is None or math.isnan(v) else v


def worst_cases(summary: dict, n: int) -> list[str]:
    ranked = sorted(summary["cases"], key=lambda c: _sort_key(c["foreground_dice"]))
    return [c["case_id"] for c in (ranked if n < 0 else ranked[:n])]


def training_curves(model_dir, out_dir: Path) -> dict[str, str]:
    """``fold -> path of fold_*/progress.png relative to out_dir`` for a model folder (empty without one)."""
    if model_dir is None:
        return {}

    folder = ModelFolder(model_dir)
    pngs = [(fold, folder.progress_plot(fold)) for fold, _ in folder.fold_dirs()]
    return {fold: os.path.relpath(png.resolve(), out_dir.resolve()) for fold, png in pngs if png.is_file()}


def write_reports(summary: dict, out_dir: Path, images_dir=None, pictures: int = 10, model_dir=None) -> dict:
    """Write pictures, ``metrics.csv``, ``metrics.json`` and ``report.md``; return the summary with picture links."""

    out_dir.mkdir(parents=True, exist_ok=True)
    pics: dict = {"boxplot": None, "cases": {}}
    if pictures != 0 and summary["cases"]:
        dice_boxplot(summary, out_dir / "pictures" / "dice_boxplot.png")
        pics["boxplot"] = "pictures/dice_boxplot.png"
        pics["cases"] = case_pictures(summary, worst_cases(summary, pictures), out_dir / "pictures",
                                      images_dir=images_dir, relative_to=out_dir)
    pics["training"] = training_curves(model_dir, out_dir)
    summary["pictures"] = pics
    summary["files"] = {"csv": "metrics.csv", "json": "metrics.json", "report": "report.md"}
    write_text_atomic(out_dir / "metrics.csv", metrics_csv(summary))
    clean = nan_to_none(summary)
    write_json_atomic(out_dir / "metrics.json", json.loads(json.dumps(clean, allow_nan=False)))
    write_text_atomic(out_dir / "report.md", markdown_report(summary))
    return summary
