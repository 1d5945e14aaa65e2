"""Export stage of a large CT: 118-class probabilities back to the input grid, argmax. Old way vs candidate pruning.

The export (revert) stage is backend-independent torch code; on the large CT it took 31-55 s of a 140 s case
(`RESULTS.md`, large CT per backend), so a faster network alone cannot make the case much faster. This script
times, in one process with repetitions interleaved:

* ``all-classes``: the revert as it was before candidate pruning: every class interpolated over every output
  voxel (linear along axis 0, bilinear in-plane), then a running argmax over the classes;
* ``pruned``: ``revert_to_original(out="labels")`` as it is now (``seg3d.preprocessing.argmax_resample``).

and reports their agreement (share of identical voxels; the two interpolate with different float rounding,
so exact ties can fall either way) and the agreement of ``pruned`` with ``argmax_reference`` (every class
interpolated by the same separable code, then ``torch.argmax``), which must be 100%.

Probabilities: how a trained network's softmax looks is what matters for pruning (nearly one-hot, soft
borders), and random weights do not give that. So they are made from a real segmentation: TotalSegmentator's
label map of its example CT at 3 mm (``../shared/data/Dataset101_TotalSegExampleCT``, 62 of 118 classes
present), one-hot, blurred by a Gaussian of ``--sigma`` voxels, as logits ``x --scale`` plus noise, softmax
over 118 classes. Without ../shared, ``--phantom`` uses synthetic ellipsoid labels instead; ``--flat`` the
near-uniform output of an untrained network (smooth random logits), the case pruning cannot help. The
output grid is the CT at 0.8 x 0.8 x 1 mm (3.75x, 3.75x, 3x the source per axis).

    .venv/bin/python benchmarks/bench_revert.py --reps 3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from seg3d.core.plan import Configuration, Topology
from seg3d.io.image import Geometry, Reorientation
from seg3d.preprocessing.argmax_resample import _all_candidates, argmax_reference
from seg3d.preprocessing.pipeline import CaseProperties, revert_to_original

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Dataset101_TotalSegExampleCT"


def label_map(args) -> np.ndarray:
    """(z, y, x) int class indices at 3 mm."""
    if args.phantom:
        from scipy import ndimage
        rng = np.random.default_rng(0)
        z, y, x = np.mgrid[:110, :100, :120]
        lab = np.zeros((110, 100, 120), np.int64)
        for c in range(1, 40):  # 39 ellipsoids in a body-like box
            cz, cy, cx = rng.uniform([10, 20, 20], [100, 80, 100])
            rz, ry, rx = rng.uniform(4, 14, 3)
            lab[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] = c
        return ndimage.median_filter(lab, 3)
    import nibabel as nib
    f = SHARED / "labelsTr" / "totalseg_ct_full.nii.gz"
    if not f.exists():
        raise SystemExit(f"{f} not found: run with --phantom")
    return np.asarray(nib.load(f).dataobj).astype(np.int64).transpose(2, 1, 0)  # (x,y,z) -> (z,y,x)


def probabilities(lab: np.ndarray, k: int, sigma: float, scale: float, flat: bool = False) -> torch.Tensor:
    from scipy import ndimage
    rng = np.random.default_rng(1)
    if flat:  # an untrained network: smooth random logits of order 1, near-uniform softmax
        noise = rng.standard_normal((k, *lab.shape)).astype(np.float32)
        logits = np.stack([ndimage.gaussian_filter(n, 2.0) * 5 for n in noise])
        return torch.softmax(torch.from_numpy(logits), 0).half()
    logits = np.empty((k, *lab.shape), np.float32)
    for c in range(k):
        m = (lab == c).astype(np.float32)
        logits[c] = scale * (ndimage.gaussian_filter(m, sigma) if m.any() else m)
        logits[c] += 0.3 * rng.standard_normal(lab.shape).astype(np.float32)
    return torch.softmax(torch.from_numpy(logits), 0).half()


def all_classes(probs, props, cfg) -> np.ndarray:
    """The revert before candidate pruning (commit bc0b62b): every class interpolated at every voxel (linear
    along axis 0, bilinear in-plane), a running argmax, slabs of rows within the same 256 MB."""
    k = probs.shape[0]
    dst = props.shape_after_crop
    rows = max(1, 256 * 2**20 // (3 * k * dst[1] * dst[2] * 4))
    out = np.zeros(dst, np.uint8)
    with torch.no_grad():
        for start in range(0, dst[0], rows):
            stop = min(dst[0], start + rows)
            out[start:stop] = _all_candidates(probs, list(range(k)), start, stop, dst, ("linear",) * 3,
                                              torch.int16).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=118)
    ap.add_argument("--sigma", type=float, default=1.0, help="blur of the one-hot map, source voxels")
    ap.add_argument("--scale", type=float, default=12.0, help="logit scale of the blurred one-hot map")
    ap.add_argument("--phantom", action="store_true", help="synthetic labels instead of ../shared's CT")
    ap.add_argument("--flat", action="store_true", help="an untrained network's flat output instead (worst case)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lab = label_map(args)
    probs = probabilities(lab, args.classes, args.sigma, args.scale, args.flat)
    src = tuple(lab.shape)
    out_spacing = (1.0, 0.8, 0.8)
    dst = tuple(round(n * 3.0 / s) for n, s in zip(src, out_spacing))
    cfg = Configuration("3d_fullres", (3.0, 3.0, 3.0), (64, 128, 128), 2, Topology(((3, 3, 3),), ((1, 1, 1),), (8,)),
                        src, 1.0, anisotropic_axis=None)
    geo = Geometry(dst[::-1], out_spacing[::-1], (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    props = CaseProperties(geo, Reorientation.to_canonical(geo), tuple((0, n) for n in dst), dst, dst, src, out_spacing)
    info = {"source": list(src), "output": list(dst), "classes": args.classes,
            "classes_present": len(np.unique(lab)), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads()}
    print(json.dumps(info), flush=True)
    times: dict[str, list[float]] = {"all-classes": [], "pruned": []}
    outs = {}
    for rep in range(args.reps):
        for name, runs in times.items():
            t = time.perf_counter()
            if name == "pruned":
                outs[name] = revert_to_original(probs, props, None, cfg, out="labels")
            else:
                outs[name] = all_classes(probs, props, cfg)
            runs.append(time.perf_counter() - t)
            print(f"rep {rep} {name}: {runs[-1]:.2f} s", flush=True)
    ref = argmax_reference(probs, dst, ("linear",) * 3)
    res = {name: {"median_s": float(np.median(v)), "runs_s": [round(x, 2) for x in v]} for name, v in times.items()}
    res["speedup"] = res["all-classes"]["median_s"] / res["pruned"]["median_s"]
    res["identical_pruned_vs_all_classes"] = float((outs["pruned"] == outs["all-classes"]).mean())
    res["identical_pruned_vs_reference"] = float((outs["pruned"] == ref).mean())
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
