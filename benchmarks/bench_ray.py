"""Ray engine vs local predict: per-case overhead, 1 vs 2 workers, and what the driver costs per case.

Side by side in one process, repetitions interleaved: `seg3d predict` (the local runner: one process, read ahead,
write behind) and the Ray engine on a local cluster (127.0.0.1 only) started once, with 1 worker holding every
core and with 2 workers of 1 core each, on the same held-out hippocampus cases (fold-0 validation cases of the
model, linked from the shared dataset into a work folder), with TTA. Reported per configuration:

* seconds per case in the steady state (the summary's ``seconds_per_case``: from the first case submitted to
  the last written, divided by the cases; for Ray after the workers started, loaded the model and passed the
  storage probe), and the overhead of Ray against local;
* end-to-end seconds (model loading and, for Ray, worker start-up and the probe; the cluster's own start-up is
  measured once and reported apart);
* the driver's CPU seconds per case during a Ray run (time.process_time: listing, scheduling, records,
  manifest), i.e. the rate at which one driver would saturate;
* that the Ray outputs equal the local ones voxel for voxel and header for header.

Usage (under the benchmark lock; a model folder trained with `seg3d train`):
  flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_ray.py \
      --model /work/bench_ray/plan/models/3d_fullres_unet_ce_dice --cases 12 --reps 2 --work /tmp/bench_ray
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from common import REPO

DATA = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"


def link_cases(model: Path, dataset: Path, n: int, folder: Path) -> list[str]:
    """Symbolic links to the first ``n`` fold-0 validation images (held out from training) in ``folder``."""
    ids = json.loads((model / "splits.json").read_text())[0]["val"][:n]
    folder.mkdir(parents=True, exist_ok=True)
    for c in ids:
        (folder / f"{c}_0000.nii.gz").symlink_to(dataset / "imagesTr" / f"{c}_0000.nii.gz")
    return ids


def same_outputs(a: Path, b: Path, ids: list[str]) -> bool:
    """Masks equal voxel for voxel and NIfTI headers equal byte for byte."""
    import nibabel as nib
    import numpy as np

    for c in ids:
        x, y = nib.load(a / f"{c}.nii.gz"), nib.load(b / f"{c}.nii.gz")
        if x.header.binaryblock != y.header.binaryblock or not np.array_equal(x.dataobj, y.dataobj):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=DATA)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ray"))
    args = ap.parse_args()

    import torch

    from seg3d.core.device import cpu_has_fast_bf16, set_threads
    from seg3d.core.settings import PredictSettings, RaySettings
    from seg3d.runners.local import predict_folder
    from seg3d.runners.ray import predict_folder_ray, ray_cluster

    shutil.rmtree(args.work, ignore_errors=True)
    ids = link_cases(args.model, args.dataset, args.cases, args.work / "in")
    cores = set_threads(None)
    settings = PredictSettings(tta=True)
    configs = {"local": None,
               "ray, 1 worker x all cores": RaySettings(workers=1, cpus_per_worker=cores),
               "ray, 2 workers x 1 core": RaySettings(workers=2, cpus_per_worker=1)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    t0 = time.perf_counter()
    with ray_cluster(RaySettings()) as _:
        cluster_start = time.perf_counter() - t0
        for rep in range(args.reps):
            for name, rs in configs.items():
                out = args.work / f"out_{'local' if rs is None else f'ray{rs.workers}'}_{rep}"
                cpu0 = time.process_time()
                if rs is None:
                    s = predict_folder(args.work / "in", out, args.model, settings)
                else:
                    s = predict_folder_ray(args.work / "in", out, args.model, settings, rs)
                assert s["predicted"] == len(ids) and not s["failed"], s
                runs[name].append({"per_case": s["seconds_per_case"], "end_to_end": s["seconds"],
                                   "driver_cpu_per_case": (time.process_time() - cpu0) / len(ids), "out": out})
                print(f"rep {rep} {name}: {s['seconds_per_case']:.3f} s/case, {s['seconds']:.1f} s end to end",
                      flush=True)
    local_per_case = statistics.median(r["per_case"] for r in runs["local"])
    rows = []
    for name, rs in runs.items():
        per_case = statistics.median(r["per_case"] for r in rs)
        rows.append({"config": name, "per_case_s": [round(r["per_case"], 3) for r in rs],
                     "median_per_case_s": round(per_case, 3),
                     "vs_local": round(per_case / local_per_case, 3),
                     "end_to_end_s": [round(r["end_to_end"], 1) for r in rs],
                     "driver_cpu_per_case_ms": round(1000 * statistics.median(r["driver_cpu_per_case"]
                                                                              for r in rs), 1),
                     "identical_to_local": all(same_outputs(runs["local"][0]["out"], r["out"], ids) for r in rs)})
    result = {"cases": len(ids), "reps": args.reps, "tta": True, "cluster_start_s": round(cluster_start, 1),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_fast_bf16(),
              "threads": cores, "rows": rows}
    (args.work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print("\n| configuration | s/case (median) | vs local | per rep | end to end (s) | driver CPU ms/case | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_per_case_s']} | {r['vs_local']:.3f}x | {r['per_case_s']} | "
              f"{r['end_to_end_s']} | {r['driver_cpu_per_case_ms']} | {r['identical_to_local']} |")


if __name__ == "__main__":
    main()
