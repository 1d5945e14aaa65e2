"""Every inference backend and precision against torch fp32 on the same model and cases (issue 12's check).

Predicts the model's fold-0 validation cases (never trained on) with the seg3d Predictor once per
(backend, precision) this machine offers: torch fp32 (the reference), torch bf16 autocast and OpenVINO
bf16 where the CPU has native bf16 (fp16 with ``--device cuda``), OpenVINO fp32. The same pipeline
(preprocessing, sliding window, mirroring TTA, revert), no post-processing, so only the network call
differs. Reported per variant: share of voxels identical to torch fp32's mask (goal: fp32 >= 99.99%, lower
precisions >= 99.9%), mean Dice per label against the references and its difference to torch fp32 (goal
for lower precisions: within 0.002), network seconds per case and whole-case seconds (preprocess +
network + revert), and their ratio to torch fp32. Variants run interleaved, case by case, in one process.

Usage:
  .venv/bin/python benchmarks/bench_precision.py --model MODEL_DIR --cases 39 [--device cuda] \
      [--variants torch:fp32,torch:bf16,openvino:fp32,openvino:bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, dice, validation_cases

from seg3d.core.device import cpu_has_fast_bf16
from seg3d.inference.predictor import Predictor

GOAL_FP32, GOAL_LOW, GOAL_DICE = 0.9999, 0.999, 0.002


def default_variants(device: str) -> list[tuple[str, str]]:
    """What this machine offers: torch fp32 first (the reference)."""
    if device.startswith("cuda"):
        return [("torch", "fp32"), ("torch", "fp16")]
    out = [("torch", "fp32")]
    from seg3d.inference.backends import openvino as ovb

    if cpu_has_fast_bf16():
        out.append(("torch", "bf16"))
    if ovb.available():
        out.append(("openvino", "fp32"))
        if cpu_has_fast_bf16():
            out.append(("openvino", "bf16"))
    return out


def compare_variants(predictors: dict[str, Predictor], precisions: dict[str, str], cases) -> tuple[int, dict]:
    """Predict ``cases`` ((id, image, reference labels), as :func:`common.validation_cases` gives) with every
    predictor in turn, case by case; the first predictor is the reference.

    Returns the number of cases and one row per predictor: identical-voxel share against the reference's
    masks (over all cases, and the lowest of one case), mean Dice per label and its difference to the reference's, network and whole-case seconds per case
    and their speed-up over the reference, and whether issue 12's goal for its precision (``precisions[name]``:
    ``fp32`` or a lower one) is met.
    """
    names = list(predictors)
    ref_name = names[0]
    label_values = predictors[ref_name].plan.label_values[1:]
    net_s = dict.fromkeys(names, 0.0)
    case_s = dict.fromkeys(names, 0.0)
    scores: dict[str, list[list[float]]] = {n: [] for n in names}
    same = dict.fromkeys(names, 0)
    worst = dict.fromkeys(names, 1.0)
    total = 0
    for case, img, ref in cases:
        masks = {}
        for name, pred in predictors.items():
            t0 = time.perf_counter()
            pdata, props = pred.preprocess(img.array, img.geometry)
            t1 = time.perf_counter()
            probs = pred.predict_preprocessed(pdata)
            if pred.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            masks[name], _ = pred.export(probs, props)
            t3 = time.perf_counter()
            net_s[name] += t2 - t1
            case_s[name] += t3 - t0
            scores[name].append([dice(masks[name], ref, v) for v in label_values])
        for name in names:
            equal = int((masks[name] == masks[ref_name]).sum())
            same[name] += equal
            worst[name] = min(worst[name], equal / masks[ref_name].size)
        total += masks[ref_name].size
        print(f"{case}: " + ", ".join(f"{n} {(masks[n] == masks[ref_name]).mean():.5f}" for n in names[1:]),
              flush=True)
    n = len(scores[ref_name])
    dice_mean = {k: np.mean(v, 0) for k, v in scores.items()}
    rows = {}
    for name in names:
        share = same[name] / max(total, 1)
        ddice = dice_mean[name] - dice_mean[ref_name]
        fp32 = precisions[name] == "fp32"
        rows[name] = {
            "identical_voxels": round(share, 6),
            "lowest_case_identical_voxels": round(worst[name], 6),
            "dice": [round(float(v), 4) for v in dice_mean[name]],
            "dice_minus_reference": [round(float(v), 4) for v in ddice],
            "network_s_per_case": round(net_s[name] / max(n, 1), 3),
            "case_s_per_case": round(case_s[name] / max(n, 1), 3),
            "network_speedup_vs_reference": round(net_s[ref_name] / max(net_s[name], 1e-9), 2),
            "case_speedup_vs_reference": round(case_s[ref_name] / max(case_s[name], 1e-9), 2),
            "goal_met": bool(share >= (GOAL_FP32 if fp32 else GOAL_LOW)
                             and (fp32 or np.all(np.abs(ddice) <= GOAL_DICE))),
        }
    return n, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained seg3d model folder (fold_0)")
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--cases", type=int, default=39)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=None, help="backend:precision,... (default: all this machine offers; "
                                                    "the first is the reference)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    variants = ([tuple(v.split(":")) for v in args.variants.split(",")] if args.variants
                else default_variants(args.device))
    names = [f"{b} {p}" for b, p in variants]
    ref_name = names[0]
    predictors = {n: Predictor(args.model, folds=["0"], device=args.device, precision=p, backend=b,
                               postprocess=False) for n, (b, p) in zip(names, variants)}
    precisions = {n: p for n, (_, p) in zip(names, variants)}
    n, rows = compare_variants(predictors, precisions, validation_cases(args.model, args.dataset, args.cases))
    result = {"cases": n, "device": args.device, "reference": ref_name,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_fast_bf16(),
              "threads": torch.get_num_threads(), "variants": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
