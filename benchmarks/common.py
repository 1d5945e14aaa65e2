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


def dataset_id(ds: Path) -> str:
    """nnU-Net's numeric id from a folder named DatasetXXX_Name."""
    return str(int(ds.name.split("_")[0][len("Dataset"):]))
