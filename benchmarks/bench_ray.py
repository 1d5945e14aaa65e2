"""Ray engine vs local predict: per-case overhead, 1 vs 2 workers, and what the driver costs per case.

Side by side in one process, repetitions interleaved: `seg3d predict` (the local runner: one process, read ahead,
write behind) and the Ray engine on a local cluster (127.0.0.1 only) started once, with 1 worker holding every
core and with 2 workers of 1 core each, on the same held-out hippocampus cases (fold-0 validation cases of the
model, linked from the shared dataset into a work folder), with TTA. Reported per configuration:

* seconds per case (the summary's ``seconds_per_case``: from the first case submitted to the last written,
  divided by the cases; for Ray after the workers started, loaded the model and passed the storage probe), and
  in the steady state (from the first case done to the last, divided by the cases between: the first case's
  cold start left out), each against local;
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


def ct_io(image: Path, label: Path, reps: int = 3) -> dict:
    """What one CT costs the shared storage and a worker's reading: compressed bytes per slice of the image
    and of a label map, and seconds per slice to read and decode the image (the stages' reader)."""
    from seg3d.io.image import read_header
    from seg3d.io.sources import CaseSource

    slices = read_header(image).geometry.size[2]
    src = CaseSource.from_files("ct", [image])
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        src.read(1)
        times.append(time.perf_counter() - t)
    return {"file": image.name, "size": list(read_header(image).geometry.size),
            "image_kb_per_slice": round(image.stat().st_size / slices / 1024, 1),
            "label_kb_per_slice": round(label.stat().st_size / slices / 1024, 1),
            "read_ms_per_slice": round(1000 * statistics.median(times) / slices, 2)}


class Echo:
    """A Ray actor that returns a case's record at once: the engine's own cost per case, without the work."""

    def run(self, job):
        from seg3d.inference.stages import CaseRecord

        return CaseRecord(job.case_id, "ok", output=str(job.outputs[0][1]), seconds={"network": 0.0})


def round_trip_ms(ray, in_dir: Path, calls: int = 300) -> float:
    """Median milliseconds of one case's trip driver -> actor -> driver (a real Job and CaseRecord)."""
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.stages import list_inputs

    job = list_inputs(in_dir, in_dir.parent / "rt_out", 1, PredictSettings()).todo[0]
    actor = ray.remote(Echo).options(num_cpus=1).remote()
    ray.get(actor.run.remote(job))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        ray.get(actor.run.remote(job))
        times.append(time.perf_counter() - t)
    ray.kill(actor)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=DATA)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ray"))
    ap.add_argument("--ct", type=Path, default=REPO.parent / "shared/data/Dataset101_TotalSegExampleCT",
                    help="dataset whose totalseg_ct_dicom case gives the CT storage and reading figures")
    ap.add_argument("--ct-only", action="store_true", help="only the CT storage and reading figures")
    args = ap.parse_args()
    if args.ct_only:
        print(json.dumps(ct_io(args.ct / "imagesTr/totalseg_ct_dicom_0000.nii.gz",
                               args.ct / "labelsTr/totalseg_ct_dicom.nii.gz"), indent=2))
        return

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
    with ray_cluster(RaySettings()) as ray:
        cluster_start = time.perf_counter() - t0
        rt_ms = round_trip_ms(ray, args.work / "in")
        for rep in range(args.reps):
            for name, rs in configs.items():
                out = args.work / f"out_{'local' if rs is None else f'ray{rs.workers}'}_{rep}"
                cpu0 = time.process_time()
                finished: list[float] = []  # when each case was done (the runners' progress callback)

                def progress(done: int, total: int, message: str, finished=finished) -> None:
                    if done > len(finished):
                        finished.append(time.perf_counter())

                if rs is None:
                    s = predict_folder(args.work / "in", out, args.model, settings, progress=progress)
                else:
                    s = predict_folder_ray(args.work / "in", out, args.model, settings, rs, progress=progress)
                assert s["predicted"] == len(ids) and not s["failed"], s
                steady = (finished[-1] - finished[0]) / (len(finished) - 1)
                runs[name].append({"per_case": s["seconds_per_case"], "end_to_end": s["seconds"],
                                   "steady": steady,
                                   "driver_cpu_per_case": (time.process_time() - cpu0) / len(ids), "out": out})
                print(f"rep {rep} {name}: {s['seconds_per_case']:.3f} s/case, steady {steady:.3f} s/case, "
                      f"{s['seconds']:.1f} s end to end", flush=True)
    local_per_case = statistics.median(r["per_case"] for r in runs["local"])
    local_steady = statistics.median(r["steady"] for r in runs["local"])
    rows = []
    for name, rs in runs.items():
        per_case = statistics.median(r["per_case"] for r in rs)
        steady = statistics.median(r["steady"] for r in rs)
        rows.append({"config": name, "per_case_s": [round(r["per_case"], 3) for r in rs],
                     "median_per_case_s": round(per_case, 3),
                     "vs_local": round(per_case / local_per_case, 3),
                     "steady_s": [round(r["steady"], 3) for r in rs], "median_steady_s": round(steady, 3),
                     "steady_vs_local": round(steady / local_steady, 3),
                     "end_to_end_s": [round(r["end_to_end"], 1) for r in rs],
                     "driver_cpu_per_case_ms": round(1000 * statistics.median(r["driver_cpu_per_case"]
                                                                              for r in rs), 1),
                     "identical_to_local": all(same_outputs(runs["local"][0]["out"], r["out"], ids) for r in rs)})
    result = {"cases": len(ids), "reps": args.reps, "tta": True, "cluster_start_s": round(cluster_start, 1),
              "round_trip_ms_per_case": round(rt_ms, 2),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_fast_bf16(),
              "threads": cores, "rows": rows}
    (args.work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print("\n| configuration | s/case (median) | vs local | per rep | steady s/case | steady vs local | per rep "
          "| end to end (s) | driver CPU ms/case | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_per_case_s']} | {r['vs_local']:.3f}x | {r['per_case_s']} | "
              f"{r['median_steady_s']} | {r['steady_vs_local']:.3f}x | {r['steady_s']} | "
              f"{r['end_to_end_s']} | {r['driver_cpu_per_case_ms']} | {r['identical_to_local']} |")


if __name__ == "__main__":
    main()
