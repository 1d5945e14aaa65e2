"""Are torch ops (seg3d's export stage) slower in a process that has run an OpenVINO network? (issue 12)

One process per mode: ``torch`` runs the CT-sized network through torch, ``openvino`` through OpenVINO,
``openvino-nopin`` through OpenVINO without thread pinning; a revert-like torch op (trilinear upsampling of 118
channels, argmax) is timed (wall, CPU seconds) before and after; thread affinities are listed.

Usage (XML: an IR converted by bench_large_ct.py --network ct, in MODEL/openvino_cache/*/network.xml):
  for m in torch openvino openvino-nopin; do .venv/bin/python benchmarks/bench_ov_interference.py $m XML; done
"""
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
mode, xml = sys.argv[1], sys.argv[2]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
x = torch.rand(1, 118, 12, 30, 30)
def op():
    t0, c0 = time.perf_counter(), cpu()
    for _ in range(3):
        F.interpolate(x, size=(24, 120, 120), mode="trilinear").argmax(1)
    return round(time.perf_counter() - t0, 2), round(cpu() - c0, 2)
print(mode, "before", [op() for _ in range(2)], flush=True)
inp = torch.randn(1, 1, 64, 128, 128)
if mode.startswith("openvino"):
    from seg3d.inference.backends import openvino as ovb
    call = ovb.OpenVinoNetwork(xml, "fp32", torch.get_num_threads())
    if mode == "openvino-nopin":
        call.compiled = ovb._core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False})
        call._request = call.compiled.create_infer_request()
        print("pinning", call.compiled.get_property("ENABLE_CPU_PINNING"))
    if len(sys.argv) > 3: print("pinning", call.compiled.get_property("ENABLE_CPU_PINNING"))
    call(inp)
else:
    from bench_large_ct import NETWORKS

    from seg3d.core.plan import Topology
    from seg3d.nets.unet import UNet
    f, s, p, _ = NETWORKS["ct"]
    net = UNet(Topology(((3, 3, 3),) * len(f), s, f), 1, 118, False).eval()
    with torch.no_grad(): net(inp)
print(mode, "after", [op() for _ in range(3)], flush=True)
aff = {}
for t in os.listdir("/proc/self/task"):
    status = Path(f"/proc/self/task/{t}/status").read_text().splitlines()
    line = next(row for row in status if row.startswith("Cpus_allowed_list")).split()[1]
    aff[line] = aff.get(line, 0) + 1
print(mode, "threads by allowed cpus", aff, "rss GB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))
