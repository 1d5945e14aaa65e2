"""Low-precision inference against float32 on the same model and cases (issue 4's agreement check).

Predicts the model's fold-0 validation cases twice with the seg3d Predictor, in float32 and in the low
precision (bf16 autocast on CPUs with native bf16, fp16 on CUDA, or ``--precision``), and reports the share of
identical voxels in the final masks (goal ≥ 99.9%), the Dice of each against the references, and the network
seconds per case of each. On a CPU without native bf16 the script stops and says so: there PyTorch emulates
bf16 convolutions ~100x slower than fp32 and seg3d's ``--precision auto`` never picks them.

Usage:
  .venv/bin/python benchmarks/bench_precision.py --model /tmp/bench_tta/model --cases 39 [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, dice, validation_cases

from seg3d.core.device import cpu_has_fast_bf16
from seg3d.inference.predictor import Predictor


def low_precision_for(device: str) -> str:
    if device.startswith("cuda"):
        return "fp16"
    if not cpu_has_fast_bf16():
        sys.exit("this CPU has no native bf16 convolutions (torch.ops.mkldnn._is_mkldnn_bf16_supported() is "
                 "False): seg3d predicts in fp32 here and there is no low precision to check. Run this on a CPU "
                 "with AVX512-BF16/AMX or with --device cuda (or pass --precision to force one).")
    return "bf16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained seg3d model folder (fold_0)")
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--cases", type=int, default=39)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default=None, help="low precision to compare (default: bf16 on CPU, fp16 "
                                                      "on CUDA)")
    args = ap.parse_args()
    low = args.precision or low_precision_for(args.device)
    predictors = {p: Predictor(args.model, folds=[0], device=args.device, precision=p, postprocess=False)
                  for p in ("fp32", low)}
    label_values = predictors["fp32"].plan.label_values[1:]
    seconds = dict.fromkeys(predictors, 0.0)
    scores: dict[str, list[list[float]]] = {p: [] for p in predictors}
    same = total = 0
    for case, img, ref in validation_cases(args.model, args.dataset, args.cases):
        masks = {}
        for name, pred in predictors.items():
            pdata, props = pred.preprocess(img.array, img.geometry)
            t = time.perf_counter()
            probs = pred.predict_preprocessed(pdata)
            if pred.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - t
            masks[name], _ = pred.export(probs, props)
            scores[name].append([dice(masks[name], ref, v) for v in label_values])
        same += int((masks["fp32"] == masks[low]).sum())
        total += masks["fp32"].size
        print(f"{case}: agreement {(masks['fp32'] == masks[low]).mean():.5f}", flush=True)
    n = len(scores["fp32"])
    result = {"cases": n, "device": args.device, "low_precision": low,
              "identical_voxels": round(same / max(total, 1), 6),
              "dice": {p: [round(float(v), 4) for v in np.mean(scores[p], 0)] for p in predictors},
              "network_s_per_case": {p: round(seconds[p] / max(n, 1), 3) for p in predictors}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
