"""Evaluation side by side with nnU-Net v2: agreement of per-case Dice, and wall time (interleaved runs).

Predictions are made by perturbing the hippocampus references (shift by one voxel, drop a random slab of
one class), so Dice values span a useful range. seg3d computes Dice, IoU, HD95 and surface Dice; nnU-Net's
``nnUNetv2_evaluate_simple`` computes Dice and IoU only (its own counting code, an independent check).

    .venv/bin/python benchmarks/evaluation.py --nnunet-bin /work/nnunet-venv/bin --cases 60 --reps 2
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_predictions(labels_dir: Path, out: Path, gt: Path, n: int, seed: int = 0) -> None:
    from seg3d.io.image import read_image, write_image

    rng = np.random.default_rng(seed)
    files = sorted(p for p in labels_dir.iterdir() if p.name.endswith(".nii.gz"))[:n]
    for f in files:
        img = read_image(f)
        a = np.roll(img.array, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
        v = int(rng.integers(1, 3))
        z = int(rng.integers(0, a.shape[0]))
        a[z:z + 2][a[z:z + 2] == v] = 0
        write_image(a.astype(np.uint8), img.geometry, out / f.name)
        os.symlink(f.resolve(), gt / f.name)


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" /
                                          "Dataset004_Hippocampus"))
    ap.add_argument("--nnunet-bin", required=True)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seg3d-bench-eval-"))
    pred, gt = work / "pred", work / "gt"
    pred.mkdir()
    gt.mkdir()
    make_predictions(Path(args.data) / "labelsTr", pred, gt, args.cases)
    seg3d = [sys.executable, "-m", "seg3d.cli.main", "evaluate", str(pred), str(gt), "-o", str(work / "ours"),
             "--dataset-json", str(Path(args.data) / "dataset.json"), "--pictures", "0",
             "--workers", str(args.workers)]
    theirs = [str(Path(args.nnunet_bin) / "nnUNetv2_evaluate_simple"), str(gt), str(pred), "-l", "1", "2",
              "-np", str(args.workers), "-o", str(work / "nnunet.json")]
    times = {"seg3d": [], "nnunet": []}
    for _ in range(args.reps):  # interleaved: the machine is shared and noisy
        times["seg3d"].append(timed(seg3d))
        times["nnunet"].append(timed(theirs))
    with open(work / "ours" / "metrics.csv", newline="") as f:
        ours = {(r["case_id"], int(r["label"])): float(r["dice"]) for r in csv.DictReader(f)}
    nn = json.loads((work / "nnunet.json").read_text())
    diffs = []
    for c in nn["metric_per_case"]:
        cid = Path(c["reference_file"]).name[: -len(".nii.gz")]
        for lab, m in c["metrics"].items():
            d_ours, d_nn = ours[(cid, int(lab))], m["Dice"]
            if not (np.isnan(d_ours) and np.isnan(d_nn)):
                diffs.append(abs(d_ours - d_nn))
    res = {"cases": args.cases, "workers": args.workers, "seg3d_s": times["seg3d"], "nnunet_s": times["nnunet"],
           "median_ratio_nnunet_over_seg3d": float(np.median(times["nnunet"]) / np.median(times["seg3d"])),
           "dice_pairs_compared": len(diffs), "max_abs_dice_difference": float(max(diffs)),
           "seg3d_foreground_mean": json.loads((work / "ours" / "metrics.json").read_text())["foreground_mean"],
           "work_dir": str(work)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
