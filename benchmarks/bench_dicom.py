"""Reading a DICOM series: seg3d's reader (discovery + checks + decode) vs SimpleITK's GDCM series reader,
side by side in one run, on the same files; also checks that both give the same voxels on the same grid.

    .venv/bin/python benchmarks/bench_dicom.py [--series ../shared/data/DICOM_TotalSegExampleCT/series] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, default=REPO.parent / "shared/data/DICOM_TotalSegExampleCT/series")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if not a.series.is_dir():
        sys.exit(f"series folder not found: {a.series}")
    import SimpleITK as sitk
    import torch

    from seg3d.io.dicom import discover_series, read_series
    from seg3d.io.image import Geometry

    def ours():
        inv = discover_series(a.series)
        return read_series(inv.series[0])[:2]

    def theirs():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(a.series)))
        img = r.Execute()
        return sitk.GetArrayFromImage(img).astype(np.float32), Geometry.from_sitk(img)

    times: dict[str, list[float]] = {"seg3d": [], "simpleitk": []}
    for _ in range(a.reps):  # interleaved, so load changes hit both
        for name, fn in (("seg3d", ours), ("simpleitk", theirs)):
            t = time.perf_counter()
            arr, geo = fn()
            times[name].append(time.perf_counter() - t)
            if name == "seg3d":
                mine = (arr, geo)
    same = np.array_equal(mine[0], arr) and not mine[1].mismatches(geo, rtol=1e-6, atol_mm=1e-4)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"cpu={torch.backends.cpu.get_cpu_capability()} bf16={torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"series {a.series} shape {mine[0].shape}: seg3d {med['seg3d']:.3f} s, SimpleITK {med['simpleitk']:.3f} s "
          f"(median of {a.reps}; ratio {med['seg3d'] / med['simpleitk']:.2f}); same voxels and grid: {same}")


if __name__ == "__main__":
    main()
