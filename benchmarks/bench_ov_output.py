"""How one OpenVINO network call hands its logits to seg3d: copies, shared buffers, speed (issue 12).

The large-CT benchmark's network (16-64 features, 3 stages, 118 classes) on a batch of two 64^3 windows, as the
sliding window feeds it on the CPU; every strategy is followed by the softmax the sliding window computes, timed
together, repetitions interleaved, median seconds per pass:

- ``before``: ``infer({0: x})`` then ``get_output_tensor(0).data.copy()`` (what seg3d did: ``infer`` copies
  the outputs into its result, then the call copies them again);
- ``seg3d``: :class:`seg3d.inference.backends.openvino.OpenVinoNetwork` as the predictor uses it (input
  shared, the runtime's output buffer returned without a copy, consumed before the next call);
- ``copy_once``: the same with ``copy_output=True`` (one copy the caller owns);
- ``set_output_tensor``: a new torch tensor per call handed to the request as its output (and the input shared),
  so that the runtime writes into seg3d's memory;
All four give bit-identical logits (checked).

Usage:
  flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_ov_output.py [--reps 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    import openvino as ov
    from bench_large_ct import NETWORKS

    from seg3d.core.plan import Topology
    from seg3d.inference.backends import openvino as ovb
    from seg3d.nets.unet import UNet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classes", type=int, default=118)
    a = ap.parse_args()
    features, strides, patch, _ = NETWORKS["small"]
    torch.manual_seed(0)
    net = UNet(Topology(((3, 3, 3),) * len(features), strides, features), 1, a.classes, False).eval()
    entry = ovb.find_or_convert(ovb.state_dict_checksum(net.state_dict()), lambda: net, 1, patch,
                                [Path(tempfile.mkdtemp())], log=print)
    call = ovb.OpenVinoNetwork(entry.xml, "fp32", a.threads)
    copy_once = ovb.OpenVinoNetwork(entry.xml, "fp32", a.threads, copy_output=True)
    requests = {k: call.compiled.create_infer_request() for k in ("before", "set_output_tensor")}
    keep = {}

    def before(x):
        r = requests["before"]
        r.infer({0: x.numpy()})
        return torch.from_numpy(r.get_output_tensor(0).data.copy())

    def set_output_tensor(x):
        r = requests["set_output_tensor"]
        out = torch.empty((x.shape[0], a.classes, *x.shape[2:]))
        arrays = (x.numpy(), out.numpy())
        tensors = [ov.Tensor(arr, shared_memory=True) for arr in arrays]
        r.set_input_tensor(0, tensors[0])
        r.set_output_tensor(0, tensors[1])
        keep["bound"] = (x, out, arrays, tensors)  # the request points into these until the next call
        r.infer()
        return out

    ways = {"before": before, "seg3d": call, "copy_once": copy_once, "set_output_tensor": set_output_tensor}
    x = torch.randn(2, 1, *patch)
    ref = before(x).clone()
    identical = {k: bool(torch.equal(f(x), ref)) for k, f in ways.items()}
    seconds = {k: [] for k in ways}
    for _ in range(a.reps):
        for k, f in ways.items():
            t0 = time.perf_counter()
            torch.softmax(f(x), dim=1)
            seconds[k].append(time.perf_counter() - t0)
    res = {"classes": a.classes, "window": patch, "batch": 2, "threads": a.threads,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "identical_to_before": identical,
           "median_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
           "all_s": {k: [round(t, 3) for t in v] for k, v in seconds.items()}}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
