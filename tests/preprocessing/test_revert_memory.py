"""revert_to_original stays within a memory bound on a many-class volume (peak RSS of a subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource
import numpy as np, torch
from seg3d.io.image import Geometry, Reorientation
from seg3d.preprocessing.pipeline import CaseProperties, revert_to_original
from seg3d.core.plan import Configuration, Topology
k, src, dst = 64, (16, 96, 96), (32, 192, 192)
cfg = Configuration("3d_fullres", (1.0, 1.0, 1.0), (16, 64, 64), 2, Topology(((3, 3, 3),), ((1, 1, 1),), (8,)),
                    src, 1.0, anisotropic_axis=None)
geo = Geometry(dst[::-1], (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
reo = Reorientation.to_canonical(geo)
props = CaseProperties(geo, reo, ((0, dst[0]), (0, dst[1]), (0, dst[2])), dst, dst, src, (0.5, 0.5, 0.5))
g = torch.Generator().manual_seed(0)
probs = torch.softmax(torch.randn(k, *src, generator=g), 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lab = revert_to_original(probs, props, None, cfg, slab_bytes=16 * 2**20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mb": (after - before) / 1024, "shape": list(lab.shape), "dtype": str(lab.dtype),
                  "max": int(lab.max())}))
"""


@pytest.mark.slow
def test_revert_peak_memory_is_bounded():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    full_float32_mb = 64 * 32 * 192 * 192 * 4 / 2**20  # what a non-slab revert would hold at least once (288 MB)
    assert out["shape"] == [32, 192, 192] and out["dtype"] == "uint8" and out["max"] < 64
    assert out["extra_mb"] < full_float32_mb / 3, out
