"""Peak memory of `seg3d predict` end to end on a large CT (512x512x500 and more), 118 classes.

What the issue bounds is memory, not accuracy, so the network is a small random one: a hand-made plan (CT
normalisation, 118 classes, 3d_fullres at a coarse 4 mm spacing, a 16-feature 3-stage UNet, random weights).
Everything around it is the real path a large CT takes: reading the NIfTI, cropping, resampling to the plan's
spacing, sliding-window prediction, reverting 118-class probabilities to the 512x512xN input grid, argmax, writing
the mask with the input's header. The coarse spacing only keeps the network part short on 2 cores; the revert to
full resolution, where memory used to blow up (nnU-Net issue #2912: 16 GB), is the full-size one.

For scale, the input itself is 512*512*500*2 bytes = 0.26 GB as int16 and 0.52 GB as float32; one float32
probability map per class at full resolution would be 118 * 0.52 = 61.9 GB.

``--network ct`` replaces the small network by a CT-sized one (nnU-Net's CT plan shape: 32-320 features, 6
stages, patch 64x128x128), at ``--spacing`` (default 3 mm, the spacing of TotalSegmentator's fast model, so that
a 512x512x``--slices`` CT needs a few dozen windows): the network is then most of the case's time, and the
per-window speed of the backends can show in the wall time.

Each ``--variants`` entry (backend:precision) is one run of `seg3d predict` (OpenVINO's one-time conversion is
done first, untimed, by loading the model once); ``--reps`` repeats the variants interleaved. Per run: wall
time, peak RSS of the process tree and the per-stage seconds the predict manifest records (read, preprocess,
network, export = revert to the input grid + argmax, write) and the CPU seconds it used (user + system).

Usage:
  .venv/bin/python benchmarks/bench_large_ct.py --slices 500 --work /tmp/bench_large_ct \
      --variants torch:fp32,openvino:fp32,torch:bf16,openvino:bf16
  .venv/bin/python benchmarks/bench_large_ct.py --network ct --slices 200 --work /tmp/bench_large_ct_net \
      --variants torch:fp32,openvino:fp32
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from bench_predict import run_tree
from common import REPO


def make_ct(path: Path, slices: int, seed: int = 0) -> None:
    """A CT-like int16 volume: air around a body ellipse of soft tissue with brighter 'organs' and noise."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    _, y, x = np.ogrid[:slices, :512, :512]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 230.0) ** 2 <= 1.0
    vol = np.full((slices, 512, 512), -1000, np.int16)
    vol[:, body[0]] = 40
    for k in range(12):
        cy, cx, r = rng.integers(150, 360), rng.integers(150, 360), rng.integers(15, 45)
        disk = ((y - cy) ** 2 + (x - cx) ** 2 <= r * r)[0]
        lo, hi = sorted(rng.integers(0, slices, 2))
        vol[lo:hi, disk] = rng.integers(60, 300)
    vol += rng.normal(0, 15, vol.shape).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 1.0))
    img.SetOrigin((-204.8, -204.8, -250.0))
    sitk.WriteImage(img, str(path), useCompression=True)


NETWORKS = {
    # name: (features, strides, patch, default spacing in mm)
    "small": ((16, 32, 64), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), (64, 64, 64), 4.0),
    "ct": ((32, 64, 128, 256, 320, 320), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
           (64, 128, 128), 3.0),
}


def make_model(model_dir: Path, classes: int, network: str = "small", spacing: float | None = None,
               slices: int = 500) -> None:
    import torch

    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology
    from seg3d.nets import build_network

    features, strides, patch, default_spacing = NETWORKS[network]
    mm = float(spacing or default_spacing)
    topo = Topology(((3, 3, 3),) * len(features), strides, features)
    median = (round(slices * 1.0 / mm), round(512 * 0.8 / mm), round(512 * 0.8 / mm))
    cfg = Configuration("3d_fullres", (mm, mm, mm), patch, 2, topo, median, 0.5, precision="fp32")
    labels = {"background": 0, **{f"structure_{i}": i for i in range(1, classes)}}
    plan = Plan("LargeCT", ("CT",), labels, (ChannelNormalization("CT", "ct", -1000, 1000, 0, 500),),
                {"3d_fullres": cfg}, (1.0, 0.8, 0.8), (500, 512, 512), preset="benchmark")
    folder = ModelFolder(model_dir)
    folder.fold_dir(0).mkdir(parents=True)
    folder.save_plan(plan)
    folder.save_info(ModelInfo(config="3d_fullres"))
    torch.manual_seed(0)
    net = build_network(cfg, 1, classes)
    torch.save({"model": net.state_dict(), "arch": "unet", "config": "3d_fullres", "num_classes": classes},
               folder.checkpoint_path(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=500)
    ap.add_argument("--classes", type=int, default=118)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_large_ct"))
    ap.add_argument("--variants", default="torch:fp32,openvino:fp32",
                    help="backend:precision runs of `seg3d predict`, one after the other (e.g. add torch:bf16,"
                         "openvino:bf16 on CPUs with native bf16)")
    ap.add_argument("--network", choices=sorted(NETWORKS), default="small",
                    help="small: 16-64 features, 3 stages, 64^3 at 4 mm; ct: 32-320 features, 6 stages, "
                         "64x128x128 at 3 mm (nnU-Net's CT plan shape)")
    ap.add_argument("--spacing", type=float, default=None, help="the plan's isotropic spacing in mm (default: "
                                                                  "the network's)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of all variants, interleaved")
    ap.add_argument("--keep", action="store_true", help="reuse --work's CT and model (same options)")
    ap.add_argument("--tta", action="store_true", help="mirroring TTA on (seg3d's default; 8 passes per window); "
                                                       "off by default to keep the network part short")
    a = ap.parse_args()
    if not (a.keep and (a.work / "model").is_dir()):
        shutil.rmtree(a.work, ignore_errors=True)
        (a.work / "in").mkdir(parents=True)
        make_ct(a.work / "in" / "ct_0000.nii.gz", a.slices)
        make_model(a.work / "model", a.classes, a.network, a.spacing, a.slices)
    import SimpleITK as sitk
    import torch

    from seg3d.core.device import cpu_has_fast_bf16

    inp = sitk.ReadImage(str(a.work / "in" / "ct_0000.nii.gz"))
    variants = a.variants.split(",")
    for backend, precision in (v.split(":") for v in variants):
        if backend == "openvino":  # the one-time conversion (cached in the model folder) is not timed
            _load(a.work / "model", backend, precision)
    runs: dict[str, list] = {v: [] for v in variants}
    for rep in range(a.reps):
        for variant in variants:
            backend, precision = variant.split(":")
            out_dir = a.work / f"out_{backend}_{precision}"
            shutil.rmtree(out_dir, ignore_errors=True)
            cmd = [str(REPO / ".venv" / "bin" / "seg3d"), "predict", "-i", str(a.work / "in"), "-o",
                   str(out_dir), "-m", str(a.work / "model"), "--folds", "0", "--device", "cpu",
                   "--no-postprocess", "--backend", backend, "--precision", precision]
            if not a.tta:
                cmd.append("--no-tta")
            cpu0 = _children_cpu_s()
            sec, gb, rc = run_tree(cmd)
            cpu_s = _children_cpu_s() - cpu0
            out = sitk.ReadImage(str(out_dir / "ct.nii.gz"))
            manifest = json.loads((out_dir / "predict_manifest.json").read_text())
            run = {"wall_s": round(sec, 1), "cpu_s": round(cpu_s, 1), "peak_rss_tree_gb": round(gb, 2), "rc": rc,
                   "stage_s": {k: round(v, 1) for k, v in manifest["cases"][0]["seconds"].items()},
                   "output_size_matches": out.GetSize() == inp.GetSize(),
                   "output_pixel_type": out.GetPixelIDTypeAsString()}
            runs[variant].append(run)
            print(f"rep {rep}", variant, json.dumps(run), flush=True)
    res = {"input": [a.slices, 512, 512], "classes": a.classes, "network": a.network,
           "spacing_mm": a.spacing or NETWORKS[a.network][3], "patch": NETWORKS[a.network][2], "runs": runs,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_fast_bf16()}
    print(json.dumps(res, indent=2))
    (a.work / "result.json").write_text(json.dumps(res, indent=2))


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load(model: Path, backend: str, precision: str) -> None:
    """Load the model once in a child process (OpenVINO converts it then and caches it in the model folder)."""
    import subprocess
    import sys

    code = ("from seg3d.inference import Predictor; "
            f"Predictor({str(model)!r}, folds=['0'], device='cpu', backend={backend!r}, precision={precision!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
