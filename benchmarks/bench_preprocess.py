"""Preprocessing benchmark: seg3d's cache build vs ``nnUNetv2_preprocess`` (interleaved), and the revert step.

1. Hippocampus (195 cases), 2 workers each, fresh command-line processes (imports count):
   seg3d ``build_cache`` on the plan from ``seg3d plan`` vs ``nnUNetv2_preprocess -d ID -c 3d_fullres -np N``
   (its fingerprint + plan are made once beforehand, untimed). Outputs are deleted before every repetition.
2. Revert/export on the 512x512x20 CT (totalseg_ct_dicom, 118 classes): probabilities (one-hot of the
   preprocessed label map at a coarser grid, float16) -> labels on the input grid, time and peak RSS;
   and scipy ``ndimage.zoom(order=1)`` of the same probabilities for ``--scipy-classes`` classes.

    .venv/bin/python benchmarks/bench_preprocess.py --nnunet-bin /work/nnunet-venv/bin --reps 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUILD = """
import sys, time
t = time.perf_counter()
from seg3d.core.plan import Plan
from seg3d.preprocessing import build_cache
c = build_cache(sys.argv[1], Plan.load(sys.argv[2]), "3d_fullres", sys.argv[3], workers=int(sys.argv[4]))
print(len(c.case_ids), time.perf_counter() - t)
"""

REVERT = """
import sys, threading, time, json
import numpy as np, psutil, torch
from dataclasses import replace
from seg3d.io.layout import load_dataset, read_case_images, read_case_label
from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology
from seg3d.preprocessing import preprocess_case, revert_to_original
ds = load_dataset(sys.argv[1]); case = next(c for c in ds.cases if c.case_id == sys.argv[2])
data, geo = read_case_images(case, 1); seg, _ = read_case_label(case)
topo = Topology(((3, 3, 3),), ((1, 1, 1),), (8,))
cfg = Configuration("3d_fullres", (2.0, 1.5, 1.5), (16, 128, 128), 2, topo, (20, 334, 334), 1.0)
plan = Plan(ds.name, ds.channel_names, dict(ds.labels), (ChannelNormalization("CT", "ct", -1000, 1000, 0, 500),),
            {"3d_fullres": cfg}, (2.0, 0.98, 0.98), (20, 512, 512))
_, pseg, props = preprocess_case(data, geo, plan, cfg, seg=seg)
k = plan.num_classes
probs = torch.nn.functional.one_hot(torch.from_numpy(pseg[0].astype(np.int64)), k).permute(3, 0, 1, 2).half()
probs = probs.contiguous()
proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; stop = [False]
def poll():
    while not stop[0]:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)
th = threading.Thread(target=poll); th.start()
t = time.perf_counter()
lab = revert_to_original(probs, props, plan, cfg, out="labels")
dt = time.perf_counter() - t
stop[0] = True; th.join()
lut = np.asarray(plan.label_values)
ref = np.asarray(seg)
fg = ref > 0
agree = float((lut[lab][fg] == ref[fg]).mean())
res = {"k": k, "in_shape": list(props.shape_after_resample), "out_shape": list(lab.shape), "seconds": dt,
       "probs_mb": probs.numel() * 2 / 2**20, "peak_extra_mb": (peak[0] - base) / 2**20,
       "fg_voxel_agreement": agree}
n = int(sys.argv[3])
if n:
    from scipy import ndimage
    p = probs[:n].float().numpy()
    zoom = [a / b for a, b in zip(props.shape_after_crop, props.shape_after_resample)]
    base = proc.memory_info().rss; peak = [base]; stop = [False]
    th = threading.Thread(target=poll); th.start()
    t = time.perf_counter()
    out = np.stack([ndimage.zoom(p[c], zoom, order=1) for c in range(n)])
    res["scipy_classes"] = n; res["scipy_seconds"] = time.perf_counter() - t
    stop[0] = True; th.join(); res["scipy_peak_extra_mb"] = (peak[0] - base) / 2**20
print(json.dumps(res))
"""


def _run(cmd, env=None) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return dt, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--ct", type=Path, default=REPO.parent / "shared/data/Dataset101_TotalSegExampleCT")
    ap.add_argument("--ct-case", default="totalseg_ct_dicom")
    ap.add_argument("--nnunet-bin", type=Path, default=None, help="folder holding nnUNetv2_* (omit: seg3d only)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scipy-classes", type=int, default=8, help="classes resampled with scipy (0: skip)")
    ap.add_argument("--skip-cache", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="bench_pre_"))
    try:
        if not args.skip_cache:
            ds = args.dataset.resolve()
            did = str(int(ds.name.split("_")[0][len("Dataset"):]))
            _run([str(Path(py).with_name("seg3d")), "plan", str(ds), "-o", str(tmp / "plan"),
                  "--workers", str(args.workers)])
            times: dict[str, list[float]] = {"seg3d build_cache": []}
            env = None
            if args.nnunet_bin:
                (tmp / "raw").mkdir()
                os.symlink(ds, tmp / "raw" / ds.name)
                env = dict(os.environ, nnUNet_raw=str(tmp / "raw"), nnUNet_preprocessed=str(tmp / "pre"),
                           nnUNet_results=str(tmp / "res"))
                _run([str(args.nnunet_bin / "nnUNetv2_extract_fingerprint"), "-d", did, "-np", str(args.workers)],
                     env)
                _run([str(args.nnunet_bin / "nnUNetv2_plan_experiment"), "-d", did], env)
                times["nnUNetv2_preprocess"] = []
            for rep in range(args.reps):  # interleaved: a load spike on the shared machine hits both alike
                shutil.rmtree(tmp / "cache", ignore_errors=True)
                dt, out = _run([py, "-c", BUILD, str(ds), str(tmp / "plan"), str(tmp / "cache"),
                                str(args.workers)])
                times["seg3d build_cache"].append(dt)
                print(f"rep {rep}: seg3d build_cache {dt:.2f} s ({out.split()[0]} cases)", flush=True)
                if args.nnunet_bin:
                    for d in (tmp / "pre" / ds.name).glob("nnUNetPlans_3d_fullres"):
                        shutil.rmtree(d)
                    dt, _ = _run([str(args.nnunet_bin / "nnUNetv2_preprocess"), "-d", did, "-c", "3d_fullres",
                                  "-np", str(args.workers)], env)
                    times["nnUNetv2_preprocess"].append(dt)
                    print(f"rep {rep}: nnUNetv2_preprocess {dt:.2f} s", flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, v in times.items():
                print(f"{k}: median {med[k]:.2f} s  runs {[round(x, 2) for x in v]}")
            if args.nnunet_bin:
                print(f"speed-up (nnU-Net / seg3d): {med['nnUNetv2_preprocess'] / med['seg3d build_cache']:.2f}x")
        _, out = _run([py, "-c", REVERT, str(args.ct), args.ct_case, str(args.scipy_classes)])
        print("revert:", out.strip())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
