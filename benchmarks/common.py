"""Pieces every side-by-side benchmark script shares: timed subprocess runs and the common options."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of ``cmd``; a failing command stops the benchmark with its output."""
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return dt


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """--dataset, --nnunet-bin, --workers, --reps: the options of every side-by-side run."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--nnunet-bin", type=Path, default=None, help="folder holding nnUNetv2_* (omit: seg3d only)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    return ap


def dice(a, b, value: int) -> float:
    """Dice of one label value between two label arrays (0 when neither has it)."""
    x, y = a == value, b == value
    return float(2 * (x & y).sum() / max(int(x.sum() + y.sum()), 1))


def validation_cases(model_dir: Path, dataset: Path, n: int):
    """(case id, image, reference labels) for the first ``n`` fold-0 validation cases of a seg3d model."""
    import json

    import numpy as np

    from seg3d.io.image import read_image

    ids = json.loads((model_dir / "splits.json").read_text())[0]["val"][:n]
    for case in ids:
        img = read_image(dataset / "imagesTr" / f"{case}_0000.nii.gz")
        ref = np.asarray(read_image(dataset / "labelsTr" / f"{case}.nii.gz").array)
        yield case, img, ref


def dataset_id(ds: Path) -> str:
    """nnU-Net's numeric id from a folder named DatasetXXX_Name."""
    return str(int(ds.name.split("_")[0][len("Dataset"):]))


def seg3d_plan_from_nnunet(nn_plans: dict, dataset: dict, config: str = "3d_fullres"):
    """A seg3d Plan equal to nnU-Net's configuration (patch, batch, topology, spacing, z-score): same network.
    (A plan holds no path: a plan folder records its dataset with ``PlanFolder.record_dataset``.)"""
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology

    c = nn_plans["configurations"][config]
    ak = c["architecture"]["arch_kwargs"]
    topo = Topology(tuple(tuple(k) for k in ak["kernel_sizes"]), tuple(tuple(s) for s in ak["strides"]),
                    tuple(ak["features_per_stage"]))
    cfg = Configuration("3d_fullres", tuple(c["spacing"]), tuple(c["patch_size"]), c["batch_size"], topo,
                        tuple(int(v) for v in c["median_image_size_in_voxels"]), 0.0, precision="fp32",
                        mirror_axes=(0, 1, 2))
    names = [dataset["channel_names"][str(i)] for i in range(len(dataset["channel_names"]))]
    return Plan(dataset_name=nn_plans["dataset_name"], channel_names=tuple(names),
                labels={k: int(v) for k, v in dataset["labels"].items()},
                normalization=tuple(ChannelNormalization(n, "zscore") for n in names),
                configurations={"3d_fullres": cfg},
                original_median_spacing=tuple(nn_plans["original_median_spacing_after_transp"]),
                original_median_shape=tuple(int(v) for v in nn_plans["original_median_shape_after_transp"]),
                preset="nnunet-equivalent")
