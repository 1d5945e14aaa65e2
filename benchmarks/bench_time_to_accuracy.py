"""Time to accuracy: plan with a preset, train one fold under a wall-clock budget, score the held-out cases.

The real command-line pipeline, each step a fresh process, timed:
  1. ``seg3d plan DATASET -p PRESET``                        (checks, fingerprint, plan)
  2. ``seg3d preprocess PLAN``                                (the cache; not part of the budget)
  3. ``seg3d train PLAN --fold F --time-budget-min M ...``    (training + per-epoch pseudo-validation <= M)
  The end of ``seg3d train`` predicts the fold's validation cases (full volumes, sliding window, mirroring
  TTA, the same Predictor as ``seg3d predict``; cases the fold never trained on) and writes
  ``fold_F/validation/summary.json``; the benchmark reports its per-class and mean foreground Dice.

Usage:
  .venv/bin/python benchmarks/bench_time_to_accuracy.py --preset cpu --minutes 10 --fold 0 \
      --work /tmp/bench_tta [-- extra seg3d train options, e.g. --arch unetpp]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import REPO, run_timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fold", default="0")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_tta"))
    ap.add_argument("--keep-plan", action="store_true", help="reuse WORK's plan and cache if present")
    ap.add_argument("train_args", nargs="*", help="extra options for seg3d train (after --)")
    a = ap.parse_args()
    seg3d = str(REPO / ".venv" / "bin" / "seg3d")
    plan_dir, model_dir = a.work / "plan", a.work / "model"
    times = {}
    if not (a.keep_plan and (plan_dir / "plans.json").is_file()):
        shutil.rmtree(a.work, ignore_errors=True)
        times["plan_s"] = run_timed([seg3d, "plan", str(a.dataset), "-o", str(plan_dir), "-p", a.preset])
        times["preprocess_s"] = run_timed([seg3d, "preprocess", str(plan_dir)])
    shutil.rmtree(model_dir, ignore_errors=True)
    cmd = [seg3d, "train", str(plan_dir), "--fold", a.fold, "--time-budget-min", str(a.minutes), "-o",
           str(model_dir), *a.train_args]
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    times["train_and_validate_s"] = run_timed(cmd, dict(os.environ, COLUMNS="200"))
    fdir = model_dir / f"fold_{a.fold}"
    summary = json.loads((fdir / "validation" / "summary.json").read_text())
    import csv

    with open(fdir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    res = {"preset": a.preset, "minutes": a.minutes, "fold": a.fold, "train_args": a.train_args,
           "epochs": len(rows), "iterations": sum(int(r["iterations"]) for r in rows),
           "trained_s": float(rows[-1]["elapsed_s"]), "s_per_iteration": None,
           "validation_cases": summary["n_cases"], "per_class_dice": summary["per_class"],
           "mean_foreground_dice": summary["mean_foreground_dice"], "tta": summary.get("tta"),
           "wall": {**times, "total_s": time.perf_counter() - t + sum(times.values()) - times["train_and_validate_s"]},
           "data_wait_median": sorted(float(r["data_wait"]) for r in rows)[len(rows) // 2]}
    res["s_per_iteration"] = res["trained_s"] / max(res["iterations"], 1)
    print(json.dumps(res, indent=2))
    (a.work / "result.json").write_text(json.dumps(res, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
