"""Peak memory of `seg3d predict` end to end on a large CT (512x512x500 and more), 118 classes.

What the issue bounds is memory, not accuracy, so the network is a small random one: a hand-made plan (CT
normalisation, 118 classes, 3d_fullres at a coarse 4 mm spacing, a 16-feature 3-stage UNet, random weights).
Everything around it is the real path a large CT takes: reading the NIfTI, cropping, resampling to the plan's
spacing, sliding-window prediction, reverting 118-class probabilities to the 512x512xN input grid, argmax, writing
the mask with the input's header. The coarse spacing only keeps the network part short on 2 cores; the revert to
full resolution, where memory used to blow up (nnU-Net issue #2912: 16 GB), is the full-size one.

For scale, the input itself is 512*512*500*2 bytes = 0.26 GB as int16 and 0.52 GB as float32; one float32
probability map per class at full resolution would be 118 * 0.52 = 61.9 GB.

Usage:
  .venv/bin/python benchmarks/bench_large_ct.py --slices 500 --work /tmp/bench_large_ct
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
    z, y, x = np.ogrid[:slices, :512, :512]
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


def make_model(model_dir: Path, classes: int) -> None:
    import torch

    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology
    from seg3d.nets import build_network

    topo = Topology(((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)), (16, 32, 64))
    cfg = Configuration("3d_fullres", (4.0, 4.0, 4.0), (64, 64, 64), 2, topo, (125, 102, 102), 0.5,
                        precision="fp32")
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
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    (a.work / "in").mkdir(parents=True)
    make_ct(a.work / "in" / "ct_0000.nii.gz", a.slices)
    make_model(a.work / "model", a.classes)
    cmd = [str(REPO / ".venv" / "bin" / "seg3d"), "predict", "-i", str(a.work / "in"), "-o", str(a.work / "out"),
           "-m", str(a.work / "model"), "--folds", "0", "--device", "cpu", "--no-tta", "--no-postprocess"]
    sec, gb, rc = run_tree(cmd)
    import SimpleITK as sitk

    out = sitk.ReadImage(str(a.work / "out" / "ct.nii.gz"))
    inp = sitk.ReadImage(str(a.work / "in" / "ct_0000.nii.gz"))
    res = {"input": [a.slices, 512, 512], "classes": a.classes, "wall_s": sec, "peak_rss_tree_gb": gb, "rc": rc,
           "output_size_matches": out.GetSize() == inp.GetSize(), "output_pixel_type": out.GetPixelIDTypeAsString()}
    print(json.dumps(res, indent=2))
    (a.work / "result.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
