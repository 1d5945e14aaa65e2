"""`seg3d plan` side by side with nnU-Net v2's fingerprint + plan, interleaved repetitions, same workers.

Each tool runs as fresh command-line processes, from scratch every time (start-up and imports count):

* seg3d: ``seg3d plan DATASET -o TMP --workers N`` (checks, fingerprint, plan); the plan folder, and with it
  the fingerprint cache, is deleted before every run;
* nnU-Net: ``nnUNetv2_extract_fingerprint -d ID -np N --clean`` (``--clean`` recomputes instead of reusing an
  existing fingerprint) then ``nnUNetv2_plan_experiment -d ID``, with nnUNet_raw / nnUNet_preprocessed /
  nnUNet_results pointing at temporary folders (the dataset is symlinked into the raw folder).

    .venv/bin/python benchmarks/bench_plan.py --nnunet-bin /work/nnunet-venv/bin --workers 2 --reps 3

Prints both plans (patch, batch, spacing, stages, features) and the speed ratio of the medians.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import base_parser, run_timed
from common import dataset_id as nnunet_dataset_id


def _ours(plan_dir: Path) -> dict:
    d = json.loads((plan_dir / "plans.json").read_text())
    return {name: {"patch": c["patch_size"], "batch": c["batch_size"], "spacing": c["spacing"],
                   "stages": len(c["topology"]["features"]), "features": c["topology"]["features"],
                   "memory_gb": c["estimated_memory_gb"]} for name, c in d["configurations"].items()}


def _theirs(pre: Path, ds_name: str) -> dict:
    d = json.loads((pre / ds_name / "nnUNetPlans.json").read_text())
    out = {}
    for name, c in d["configurations"].items():
        if "patch_size" not in c:  # cascade entries only point at others
            continue
        kw = c.get("architecture", {}).get("arch_kwargs", {})
        out[name] = {"patch": c["patch_size"], "batch": c["batch_size"], "spacing": c["spacing"],
                     "stages": kw.get("n_stages"), "features": kw.get("features_per_stage")}
    return out


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--preset", default="8gb")
    args = ap.parse_args()
    ds = args.dataset.resolve()
    dataset_id = nnunet_dataset_id(ds)
    seg3d_bin = str(Path(sys.executable).with_name("seg3d"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    (tmp / "raw").mkdir()
    os.symlink(ds, tmp / "raw" / ds.name)
    env = dict(os.environ, nnUNet_raw=str(tmp / "raw"), nnUNet_preprocessed=str(tmp / "pre"),
               nnUNet_results=str(tmp / "res"))
    plan_dir = tmp / "seg3d_plan"
    times: dict[str, list[float]] = {"seg3d plan": []}
    if args.nnunet_bin:
        times.update({"nnU-Net extract_fingerprint": [], "nnU-Net plan_experiment": [], "nnU-Net total": []})
    try:
        for rep in range(args.reps):  # interleaved: a load spike hits both tools alike
            shutil.rmtree(plan_dir, ignore_errors=True)
            times["seg3d plan"].append(run_timed([seg3d_bin, "plan", str(ds), "-o", str(plan_dir), "--preset",
                                             args.preset, "--workers", str(args.workers)]))
            line = f"rep {rep}: seg3d plan {times['seg3d plan'][-1]:.2f} s"
            if args.nnunet_bin:
                fp = run_timed([str(args.nnunet_bin / "nnUNetv2_extract_fingerprint"), "-d", dataset_id,
                           "-np", str(args.workers), "--clean"], env)
                pl = run_timed([str(args.nnunet_bin / "nnUNetv2_plan_experiment"), "-d", dataset_id], env)
                times["nnU-Net extract_fingerprint"].append(fp)
                times["nnU-Net plan_experiment"].append(pl)
                times["nnU-Net total"].append(fp + pl)
                line += f" | nnU-Net fingerprint {fp:.2f} s + plan {pl:.2f} s = {fp + pl:.2f} s"
            print(line, flush=True)
        ours = _ours(plan_dir)
        theirs = _theirs(tmp / "pre", ds.name) if args.nnunet_bin else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{ds.name}, {args.workers} worker(s), {args.reps} interleaved reps, median wall seconds")
    for k, v in med.items():
        print(f"  {k:30s} {v:6.2f} s   (all: {', '.join(f'{t:.2f}' for t in times[k])})")
    if args.nnunet_bin:
        print(f"  speed-up of seg3d plan over nnU-Net fingerprint + plan: {med['nnU-Net total'] / med['seg3d plan']:.2f}x")
    print(f"\nplans (seg3d preset {args.preset} vs nnU-Net default planner, 8 GB target)")
    for name in sorted(set(ours) | set(theirs)):
        for who, plans in (("seg3d", ours), ("nnU-Net", theirs)):
            if name in plans:
                print(f"  {name:11s} {who:8s} {json.dumps(plans[name])}")


if __name__ == "__main__":
    main()
