"""Distillation benchmark (issue 14): a 5-fold teacher, a student distilled from it, and nnU-Net, on held-out cases.

Stages (each resumable; everything is written under ``--work``, outside the repository):

``teacher``
    Split Dataset004_Hippocampus's 195 cases with a fixed seed (``--seed 14``) into a cross-validation set
    (``--cv 155`` cases) and a test set (the other 40) that neither teacher nor student ever sees; the
    cross-validation set is a dataset folder of symbolic links (``WORK/cv_dataset``), the test images are
    linked into ``WORK/test_images``. Then the real command line: ``seg3d plan WORK/cv_dataset -p cpu``,
    ``seg3d preprocess``, ``seg3d train --fold K --time-budget-min B`` for K = 0..4 (each fold on the same fixed
    wall-clock budget, 2 threads = the machine's 2 cores, which other engineers share).
``student``
    ``seg3d distill WORK/teacher -o WORK/student`` (all 5 folds with mirroring TTA as the teacher, the same plan
    and architecture for the student, defaults for temperature and alpha) on a fixed budget.
``compare``
    Side by side in one run, on the test set: one fold without TTA, one fold with TTA, the 5-fold ensemble with
    TTA (the teacher), the student without and with TTA, and nnU-Net v2 predicting the same 5 folds with TTA
    (the teacher's weights converted as bench_predict.py does). Mean Dice per class and seconds per case (wall
    clock of the whole command, model loading included). Run it under the benchmark lock.

    .venv/bin/python benchmarks/bench_distill.py teacher --work /work/bench_distill --budget-min 5
    .venv/bin/python benchmarks/bench_distill.py student --work /work/bench_distill --budget-min 15
    flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_distill.py compare --work /work/bench_distill
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO

# ../shared from the repository root; a git worktree under /work/wt/NAME finds it two levels up
DATA = next((p / "shared" / "data" / "Dataset004_Hippocampus" for p in REPO.parents
             if (p / "shared" / "data" / "Dataset004_Hippocampus").is_dir()),
            REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
SEG3D = REPO / ".venv" / "bin" / "seg3d"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], logfile: Path | None = None) -> float:
    """Run ``cmd`` (output appended to ``logfile``), stop the benchmark if it fails; wall seconds."""
    log(" ".join(cmd))
    t = time.perf_counter()
    with open(logfile or "/dev/null", "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(cmd)} (see {logfile})")
    return time.perf_counter() - t


def all_cases() -> list[str]:
    return sorted(p.name[:-len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))


def make_split(work: Path, n_cv: int, seed: int) -> dict:
    """``WORK/split.json``: {"cv": [...], "test": [...]}, a seeded permutation of the sorted case ids."""
    path = work / "split.json"
    if path.is_file():
        return json.loads(path.read_text())
    ids = all_cases()
    order = np.random.default_rng(seed).permutation(len(ids))
    split = {"seed": seed, "cv": sorted(ids[i] for i in order[:n_cv]), "test": sorted(ids[i] for i in order[n_cv:])}
    ds = work / "cv_dataset"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    meta = json.loads((DATA / "dataset.json").read_text())
    meta["numTraining"] = len(split["cv"])
    meta["description"] = f"{meta.get('description', '')} -- cross-validation subset of bench_distill (seed {seed})"
    (ds / "dataset.json").write_text(json.dumps(meta, indent=2))
    for cid in split["cv"]:
        for src, dst in ((DATA / "imagesTr" / f"{cid}_0000.nii.gz", ds / "imagesTr" / f"{cid}_0000.nii.gz"),
                         (DATA / "labelsTr" / f"{cid}.nii.gz", ds / "labelsTr" / f"{cid}.nii.gz")):
            if not dst.exists():
                dst.symlink_to(src)
    test = work / "test_images"
    test.mkdir(exist_ok=True)
    for cid in split["test"]:
        dst = test / f"{cid}_0000.nii.gz"
        if not dst.exists():
            dst.symlink_to(DATA / "imagesTr" / f"{cid}_0000.nii.gz")
    path.write_text(json.dumps(split, indent=2))
    return split


def stage_teacher(a) -> None:
    from seg3d.training import train

    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(work, a.cv, a.seed)
    log(f"split: {len(split['cv'])} cross-validation cases, {len(split['test'])} test cases (seed {a.seed})")
    plan = work / "plan"
    if not (plan / "plans.json").is_file():
        run([str(SEG3D), "plan", str(work / "cv_dataset"), "-o", str(plan), "-p", "cpu", "--workers", "2"],
            work / "teacher.log")
        run([str(SEG3D), "preprocess", str(plan), "--workers", "2"], work / "teacher.log")
    teacher = work / "teacher"
    for k in range(5):
        if (teacher / f"fold_{k}" / "checkpoint_final.pt").is_file():
            continue
        # the library's train() (what `seg3d train` calls) without the end-of-fold validation: on the shared
        # 2-core machine it cost ~35 s per case (31 cases per fold), and the test set is scored in `compare`
        t = time.perf_counter()
        with open(work / "teacher.log", "a") as f:
            res = train(plan, fold=k, model_dir=teacher, time_budget_min=a.budget_min, device="cpu", resume=True,
                        validate=False, log=lambda m: print(m, file=f, flush=True))
        log(f"fold {k}: {res['epochs']} epochs, {res['steps']} steps, {time.perf_counter() - t:.0f} s")
    log("teacher done")


def stage_student(a) -> None:
    work = a.work
    cmd = [str(SEG3D), "distill", str(work / "teacher"), "-o", str(work / "student"), "--time-budget-min",
           str(a.budget_min), "--device", "cpu", "--resume", *([] if a.teacher_tta else ["--no-tta"])]
    sec = run(cmd, work / "student.log")
    log(f"student done: {sec:.0f} s (teacher targets + training)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["teacher", "student", "compare"])
    ap.add_argument("--work", type=Path, default=Path("/work/bench_distill"))
    ap.add_argument("--cv", type=int, default=155, help="cases in the cross-validation set (the rest: test)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--budget-min", type=float, default=5.0, help="teacher: per fold; student: in all")
    ap.add_argument("--no-teacher-tta", dest="teacher_tta", action="store_false",
                    help="student stage: teacher targets without mirroring TTA (8x cheaper)")
    a = ap.parse_args()
    {"teacher": stage_teacher, "student": stage_student}[a.stage](a)


if __name__ == "__main__":
    main()
