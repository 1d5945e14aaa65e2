"""How seg3d tiles and batches an image at inference, measured on a trained model (issue 4).

Two questions, each answered on the model's own cross-validation cases (never trained on):

1. Forward-pass batch size on the CPU: milliseconds per window for batches of 1, 2, 4 and 8 windows of the
   model's patch. PyTorch sends batch-1 3D convolutions with few channels x rows to slow_conv3d rather than
   oneDNN, which is why ``sliding_window_predict`` puts at least 2 windows in a CPU pass.
2. Window policy, Dice and network seconds per case: the shipped sliding window (patch-sized windows, step
   0.5, all mirrorings), no TTA, and one whole-image window (the image padded, by reflection, up to the
   network's divisibility) which would need far fewer passes for images barely larger than the patch.

Usage:
  .venv/bin/python benchmarks/bench_window_policy.py --model /tmp/bench_tta/model --cases 39
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, dice, validation_cases

from seg3d.inference.predictor import Predictor
from seg3d.inference.sliding_window import sliding_window_predict


def forward_ms_per_window(net: torch.nn.Module, patch: tuple[int, ...], batch: int, reps: int = 5) -> float:
    x = torch.randn(batch, 1, *patch)
    with torch.no_grad():
        net(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)) / batch


def whole_image(pred: Predictor, pdata: np.ndarray, divisor: tuple[int, ...]) -> torch.Tensor:
    """One window covering the image, padded by reflection to a multiple of the network's total stride."""
    shape = pdata.shape[1:]
    target = [int(math.ceil(s / d) * d) for s, d in zip(shape, divisor)]
    pads = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(shape, target)]
    padded = np.pad(pdata, [(0, 0), *pads], mode="reflect")
    probs = sliding_window_predict(pred.networks, padded, target, 0.5, pred.config.mirror_axes, pred.device,
                                   num_classes=pred.plan.num_classes)
    return probs[(slice(None),) + tuple(slice(b, b + s) for (b, _), s in zip(pads, shape))].contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained seg3d model folder (fold_0)")
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--cases", type=int, default=39)
    args = ap.parse_args()
    torch.set_num_threads(2)
    pred = Predictor(args.model, folds=[0], device="cpu", postprocess=False)
    patch = tuple(pred.config.patch_size)
    net = pred.networks[0]
    batches = {b: round(forward_ms_per_window(net, patch, b), 1) for b in (1, 2, 4, 8)}
    print("ms per window by batch size:", batches, flush=True)

    divisor = pred.config.topology.total_stride
    policies = {
        "sliding window, TTA (shipped)": lambda x: pred.predict_preprocessed(x),
        "sliding window, no TTA": lambda x: sliding_window_predict(pred.networks, x, patch, 0.5, (), "cpu",
                                                                   num_classes=pred.plan.num_classes),
        "whole image, TTA": lambda x: whole_image(pred, x, divisor),
    }
    scores = {k: [] for k in policies}
    seconds = dict.fromkeys(policies, 0.0)
    labels_of = pred.plan.label_values[1:]
    n = 0
    for _, img, ref in validation_cases(args.model, args.dataset, args.cases):
        n += 1
        pdata, props = pred.preprocess(img.array, img.geometry)
        for name, fn in policies.items():
            t = time.perf_counter()
            probs = fn(pdata)
            seconds[name] += time.perf_counter() - t
            labels, _ = pred.export(probs, props)
            scores[name].append([dice(labels, ref, v) for v in labels_of])
    result = {"ms_per_window_by_batch": batches, "cases": n, "policies": {}}
    for name in policies:
        d = np.asarray(scores[name]).mean(0)
        result["policies"][name] = {"dice": [round(float(v), 4) for v in d], "mean": round(float(d.mean()), 4),
                                    "network_s_per_case": round(seconds[name] / n, 3)}
        print(name, result["policies"][name], flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
