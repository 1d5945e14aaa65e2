"""The Predictor of two seg3d revisions side by side: same weights, same cases, same process settings.

A structural change must keep every figure: this script predicts hippocampus cases with the Predictor of an
older revision (extracted with ``git archive``, imported from there) and of this checkout, interleaved
(old, new, old, new ...) in fresh processes with 2 torch threads, and reports seconds per case and whether
the masks and probabilities are identical.

The model folder is the golden 8 GB hippocampus plan (plans/golden/hippocampus_8gb.json: 3d_fullres, patch
40x56x40, 32-64-128-256, mirroring TTA over 3 axes) with seeded random He-initialised weights: the compute is
the real network's, and identical numerics give identical masks.

    flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_versions.py --old faeae58 --cases 6 --reps 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO

WORKER = r'''
import json, sys, time
# the checkout's editable install can map `seg3d` to itself: only PYTHONPATH's tree may answer
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import numpy as np, torch
torch.set_num_threads(2)
from seg3d.inference.predictor import Predictor
from seg3d.io.image import read_image
model, precision, out, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t0 = time.perf_counter()
p = Predictor(model, folds=[0], device="cpu", precision=precision)
load = time.perf_counter() - t0
times, labels, probs = [], {}, {}
for path in cases:
    img = read_image(path)
    t = time.perf_counter()
    pred = p.predict_case(img.array[None], img.geometry, return_probabilities=True)
    times.append(time.perf_counter() - t)
    labels[path] = pred.labels
    probs[path] = pred.probabilities.astype(np.float32)
np.savez(out, **{f"l{i}": labels[c] for i, c in enumerate(cases)}, **{f"p{i}": probs[c] for i, c in enumerate(cases)})
import seg3d
print(json.dumps({"load_s": load, "case_s": times, "threads": torch.get_num_threads(), "seg3d": seg3d.__file__}))
'''


def make_model(root: Path) -> Path:
    """The golden hippocampus plan with seeded random weights, in the model-folder format both revisions read."""
    import torch

    from seg3d.core.plan import Plan
    from seg3d.nets import build_network

    plan = Plan.from_dict(json.loads((REPO / "plans/golden/hippocampus_8gb.json").read_text()))
    model = root / "model"
    (model / "fold_0").mkdir(parents=True)
    plan.save(model / "plans.json")
    # model.json with the fields both revisions know (older ones reject unknown fields)
    (model / "model.json").write_text(json.dumps({"config": "3d_fullres", "arch": "unet", "loss": "ce_dice",
                                                  "deep_supervision": True, "seg3d_version": ""}))
    torch.manual_seed(0)
    net = build_network(plan.config("3d_fullres"), plan.num_channels, plan.num_classes)
    torch.save({"model": net.state_dict(), "arch": "unet", "config": "3d_fullres", "num_classes": plan.num_classes},
               model / "fold_0" / "checkpoint_final.pt")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision to compare with (e.g. the commit before a refactor)")
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--precision", nargs="+", default=["auto", "fp32"])
    args = ap.parse_args()
    cases = sorted(str(p) for p in (args.dataset / "imagesTr").glob("*_0000.nii.gz"))[: args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="bench_versions_"))
    old_tree = tmp / "old"
    old_tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    model = make_model(tmp)
    trees = {"old": old_tree, "new": REPO}
    result = {}
    for precision in args.precision:
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for rep in range(args.reps):
            for who in ("old", "new"):  # interleaved: a load spike hits both alike
                out = tmp / f"{who}_{precision}_{rep}.npz"
                r = subprocess.run([sys.executable, "-c", WORKER, str(model), precision, str(out), *cases],
                                   capture_output=True, text=True, check=False, cwd=tmp,
                                   env={"PYTHONPATH": str(trees[who]), "PATH": "/usr/bin:/bin"})
                if r.returncode != 0:
                    sys.exit(f"{who} failed:\n{r.stderr[-3000:]}")
                runs[who].append({**json.loads(r.stdout.strip().splitlines()[-1]), "npz": out})
                assert runs[who][-1]["seg3d"].startswith(str(trees[who])), runs[who][-1]["seg3d"]
                print(precision, who, rep, f"{statistics.mean(runs[who][-1]['case_s']):.3f} s/case", flush=True)
        a, b = np.load(runs["old"][0]["npz"]), np.load(runs["new"][0]["npz"])
        same_masks = all(np.array_equal(a[f"l{i}"], b[f"l{i}"]) for i in range(len(cases)))
        max_prob_diff = max(float(np.abs(a[f"p{i}"] - b[f"p{i}"]).max()) for i in range(len(cases)))
        per = {who: statistics.median([statistics.mean(r["case_s"]) for r in rs]) for who, rs in runs.items()}
        result[precision] = {"old_s_per_case": round(per["old"], 3), "new_s_per_case": round(per["new"], 3),
                             "new_over_old": round(per["new"] / per["old"], 3), "identical_masks": same_masks,
                             "max_probability_difference": max_prob_diff,
                             "all_reps_s_per_case": {w: [round(statistics.mean(r["case_s"]), 3) for r in rs]
                                                     for w, rs in runs.items()}}
        print(precision, json.dumps(result[precision]), flush=True)
    print(json.dumps({"cases": len(cases), "old": args.old, "results": result}, indent=2))


if __name__ == "__main__":
    main()
