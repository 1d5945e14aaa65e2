"""Per-window speed of every inference backend and precision, one process, medians (issue 12's table).

Three networks of the issue's table, random weights (speed does not depend on them), each run as seg3d's
sliding window runs it on the CPU: the same number of windows per forward pass (64^3 voxels of windows, at
least 2 for windows up to 64^3) and the same torch settings (fp32 contiguous; bf16 autocast with
channels-last-3d). Every backend x precision is timed in turn, repetitions interleaved, after a warm-up
pass (OpenVINO's first pass of a new shape compiles its kernels). Reported: median ms per window and the
ratio to torch fp32 measured in the same run; the largest |logit| difference to torch fp32 on one batch.

AVX2 behaviour on an AVX-512 machine (PyTorch and OpenVINO both obey these variables):
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_backends.py

Usage:
  .venv/bin/python benchmarks/bench_backends.py [--reps 5] [--rows small,nnunet,ct] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROWS = {
    # name: (features, strides, patch)
    "small": ((16, 32, 64, 128), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), (32, 48, 32)),
    "nnunet": ((32, 64, 128, 256), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)), (40, 56, 40)),
    "ct": ((32, 64, 128, 256, 320, 320),
           ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)), (64, 128, 128)),
}
DESCRIPTION = {"small": "16-128 features, 32x48x32 (cpu preset, hippocampus)",
               "nnunet": "32-256 features, 40x56x40 (nnU-Net's hippocampus plan)",
               "ct": "32-320 features, 6 stages, 64x128x128 (CT-sized)"}


def build(row: str, classes: int = 3):
    from seg3d.core.plan import Topology
    from seg3d.nets.unet import UNet

    features, strides, patch = ROWS[row]
    topo = Topology(((3, 3, 3),) * len(features), strides, features)
    torch.manual_seed(0)
    return UNet(topo, 1, classes, deep_supervision=True).eval(), patch


def windows_per_pass(patch) -> int:
    """The CPU batch seg3d's sliding window uses for this window size."""
    from seg3d.inference import sliding_window as sw

    voxels = int(torch.tensor(patch).prod())
    batch = max(1, sw._CPU_BATCH_VOXELS // voxels)
    return max(batch, sw._CPU_MIN_BATCH) if voxels <= sw._CPU_BATCH_VOXELS else batch


def torch_call(net, precision: str):
    amp = torch.bfloat16 if precision == "bf16" else None

    def call(x):
        if amp is not None:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad(), (torch.autocast("cpu", dtype=amp) if amp else nullcontext()):
            return net(x).float()
    if amp is not None:
        net = net.to(memory_format=torch.channels_last_3d)
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", default="small,nnunet,ct")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from seg3d.core.device import cpu_has_fast_bf16
    from seg3d.inference.backends import openvino as ovb

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bf16 = cpu_has_fast_bf16()
    kind = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": bf16,
            "threads": threads, "torch": torch.__version__, "openvino": ovb.runtime_version()}
    print(json.dumps(kind), flush=True)
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    results = {"machine": kind, "rows": {}}
    cache = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    for row in args.rows.split(","):
        net, patch = build(row)
        batch = windows_per_pass(patch)
        x = torch.randn((batch, 1, *patch))
        t = time.perf_counter()
        entry = ovb.find_or_convert(ovb.state_dict_checksum(net.state_dict()), lambda n=net: n, 1, patch,
                                    [cache])
        convert_s = time.perf_counter() - t
        calls = {f"torch {p}": torch_call(net, p) for p in precisions}
        calls.update({f"openvino {p}": ovb.OpenVinoNetwork(entry.xml, p, threads) for p in precisions})
        ref = calls["torch fp32"](x)
        max_diff = {}
        for name, call in calls.items():  # warm-up, and agreement on one batch
            max_diff[name] = float((call(x) - ref).abs().max())
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.reps):
            for name, call in calls.items():
                t = time.perf_counter()
                call(x)
                times[name].append((time.perf_counter() - t) / batch * 1000)
        med = {name: statistics.median(v) for name, v in times.items()}
        res = {"description": DESCRIPTION[row], "windows_per_pass": batch, "convert_s": round(convert_s, 1),
               "ms_per_window": {k: round(v, 1) for k, v in med.items()},
               "speedup_vs_torch_fp32": {k: round(med["torch fp32"] / v, 2) for k, v in med.items()},
               "max_abs_logit_diff_vs_torch_fp32": {k: float(f"{v:.3g}") for k, v in max_diff.items()},
               "all_ms_per_window": {k: [round(t, 1) for t in v] for k, v in times.items()}}
        results["rows"][row] = res
        print(json.dumps({row: res}), flush=True)
        del calls, net
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
