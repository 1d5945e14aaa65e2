"""Checks + fingerprint: seg3d side by side with nnU-Net v2, interleaved repetitions, same worker count.

Each tool runs as a fresh command-line process (start-up and imports count for both):

* seg3d: ``seg3d check`` alone, and ``scan_dataset`` (checks and fingerprint in one pass, no cache);
* nnU-Net: ``nnUNetv2_extract_fingerprint -np N --clean``, with and without ``--verify_dataset_integrity``.

    .venv/bin/python benchmarks/bench_fingerprint.py --nnunet-bin /work/nnunet-venv/bin --workers 2 --reps 3

The dataset folder must be named DatasetXXX_Name (nnU-Net finds it by id under its raw folder).
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import base_parser, run_timed
from common import dataset_id as nnunet_dataset_id

SCAN = ("import sys; from seg3d.fingerprint import scan_dataset; "
        "p, fp = scan_dataset(sys.argv[1], workers=int(sys.argv[2])); "
        "assert fp is not None, p; print(len(fp.cases), fp.median_spacing)")


def main() -> None:
    ap = base_parser(__doc__)
    args = ap.parse_args()
    ds = args.dataset.resolve()
    py = sys.executable
    seg3d_bin = str(Path(py).with_name("seg3d"))
    dataset_id = nnunet_dataset_id(ds)
    tmp = Path(tempfile.mkdtemp(prefix="bench_fp_"))
    env = dict(os.environ, nnUNet_raw=str(ds.parent), nnUNet_preprocessed=str(tmp / "pre"),
               nnUNet_results=str(tmp / "res"))
    runs = {"seg3d check": [seg3d_bin, "check", str(ds), "--workers", str(args.workers)],
            "seg3d check+fingerprint (scan_dataset)": [py, "-c", SCAN, str(ds), str(args.workers)]}
    if args.nnunet_bin:
        fp = str(args.nnunet_bin / "nnUNetv2_extract_fingerprint")
        runs["nnU-Net extract_fingerprint"] = [fp, "-d", dataset_id, "-np", str(args.workers), "--clean"]
        runs["nnU-Net extract_fingerprint --verify_dataset_integrity"] = \
            [fp, "-d", dataset_id, "-np", str(args.workers), "--clean", "--verify_dataset_integrity"]
    times: dict[str, list[float]] = {k: [] for k in runs}
    try:
        for rep in range(args.reps):  # interleaved: a load spike hits both tools alike
            for name, cmd in runs.items():
                times[name].append(run_timed(cmd, env))
                print(f"rep {rep}: {name}: {times[name][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{ds.name}, {args.workers} worker(s), {args.reps} interleaved reps, median wall seconds")
    for k, v in med.items():
        print(f"  {k:58s} {v:6.2f} s   (all: {', '.join(f'{t:.2f}' for t in times[k])})")
    if args.nnunet_bin:
        ours = med["seg3d check+fingerprint (scan_dataset)"]
        for k in ("nnU-Net extract_fingerprint", "nnU-Net extract_fingerprint --verify_dataset_integrity"):
            print(f"  speed-up of seg3d check+fingerprint over {k}: {med[k] / ours:.1f}x")


if __name__ == "__main__":
    main()
