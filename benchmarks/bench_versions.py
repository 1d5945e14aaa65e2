"""The Predictor of two seg3d revisions side by side: same weights, same cases, same process settings.

A structural change must keep every figure: this script predicts hippocampus cases with the Predictor of an
older revision (extracted with ``git archive``, imported from there) and of this checkout, and reports
seconds per case and whether the masks and probabilities are identical. Two ways: fresh processes, interleaved
(old, new, old, new ...), and ``--in-process``: the old tree renamed to ``seg3d_old`` and imported beside
``seg3d`` in one process, both predictors alternating case by case for ``--reps`` rounds, each case's fastest
round kept (robust to other load on a shared machine). 2 torch threads.

The model folder is the golden 8 GB hippocampus plan (plans/golden/hippocampus_8gb.json: 3d_fullres, patch
40x56x40, 32-64-128-256, mirroring TTA over 3 axes) with seeded random He-initialised weights: the compute is
the real network's, and identical numerics give identical masks.

    flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_versions.py --old faeae58 --cases 6 --reps 2
    flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_versions.py --old faeae58 --cases 8 --reps 5 \
        --in-process
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


IN_PROCESS = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
torch.set_num_threads(2)
from seg3d.inference.predictor import Predictor as New
from seg3d.io.image import read_image
from seg3d_old.inference.predictor import Predictor as Old
model, precision, reps, cases = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
preds = {"old": Old(model, folds=[0], device="cpu", precision=precision),
         "new": New(model, folds=[0], device="cpu", precision=precision)}
torch.set_num_threads(2)  # the old constructor sets all cores itself
images = [read_image(c) for c in cases]
best = {w: [float("inf")] * len(cases) for w in preds}
same = True
for r in range(reps):
    for i, img in enumerate(images):
        order = ("old", "new") if (r + i) % 2 == 0 else ("new", "old")
        out = {}
        for w in order:
            t = time.perf_counter()
            out[w] = preds[w].predict_case(img.array[None], img.geometry, return_probabilities=True)
            best[w][i] = min(best[w][i], time.perf_counter() - t)
        same = same and np.array_equal(out["old"].labels, out["new"].labels) and \
            np.array_equal(out["old"].probabilities, out["new"].probabilities)
print(json.dumps({"best_s": best, "identical": same, "threads": torch.get_num_threads()}))
'''


def old_package(tree: Path, dest: Path) -> Path:
    """The old tree's ``seg3d`` package copied as ``seg3d_old`` (every ``seg3d`` module name rewritten)."""
    import re
    import shutil

    pkg = dest / "seg3d_old"
    shutil.copytree(tree / "seg3d", pkg)
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\bseg3d(?=[.\s\"])", "seg3d_old", f.read_text()))
    return dest


def in_process(args, cases, old_tree: Path, tmp: Path, model: Path) -> dict:
    root = old_package(old_tree, tmp / "oldpkg")
    out = {}
    for precision in args.precision:
        r = subprocess.run([sys.executable, "-c", IN_PROCESS, str(root), str(model), precision, str(args.reps),
                            *cases], capture_output=True, text=True, check=False, cwd=tmp)
        if r.returncode != 0:
            sys.exit(f"in-process comparison failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        old, new = sum(res["best_s"]["old"]), sum(res["best_s"]["new"])
        out[precision] = {"old_s_per_case": round(old / len(cases), 3), "new_s_per_case": round(new / len(cases), 3),
                          "new_over_old": round(new / old, 3), "identical_masks_and_probabilities": res["identical"],
                          "per_case_ratio": [round(n / o, 3) for o, n in zip(res["best_s"]["old"],
                                                                                res["best_s"]["new"])]}
        print(precision, json.dumps(out[precision]), flush=True)
    return out


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
    ap.add_argument("--in-process", action="store_true", help="both revisions in one process, fastest of --reps")
    args = ap.parse_args()
    cases = sorted(str(p) for p in (args.dataset / "imagesTr").glob("*_0000.nii.gz"))[: args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="bench_versions_"))
    old_tree = tmp / "old"
    old_tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    model = make_model(tmp)
    if args.in_process:
        result = in_process(args, cases, old_tree, tmp, model)
        print(json.dumps({"cases": len(cases), "old": args.old, "reps": args.reps, "results": result}, indent=2))
        return
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
