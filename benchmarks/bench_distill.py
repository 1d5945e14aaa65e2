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
import os
import shutil
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
            budget = ({"epochs": a.steps // 50, "iters_per_epoch": 50} if a.steps
                      else {"time_budget_min": a.budget_min})
            res = train(plan, fold=k, model_dir=teacher, device="cpu", resume=True, validate=False,
                        log=lambda m: print(m, file=f, flush=True), **budget)
        log(f"fold {k}: {res['epochs']} epochs, {res['steps']} steps, {time.perf_counter() - t:.0f} s")
    log("teacher done")


def subset_with_targets(work: Path) -> Path:
    """A dataset folder (symbolic links) of the cross-validation cases whose teacher targets are done."""
    done = sorted(p.name[:-len("_teacher.json")] for p in (work / "student" / "distillation" / "targets").glob(
        "*_teacher.json"))
    ds = work / f"cv_subset_{len(done)}"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    meta = json.loads((work / "cv_dataset" / "dataset.json").read_text())
    meta["numTraining"] = len(done)
    (ds / "dataset.json").write_text(json.dumps(meta, indent=2))
    for cid in done:
        for sub, name in (("imagesTr", f"{cid}_0000.nii.gz"), ("labelsTr", f"{cid}.nii.gz")):
            if not (ds / sub / name).exists():
                (ds / sub / name).symlink_to(DATA / sub / name)
    log(f"student data: the {len(done)} cross-validation cases whose teacher targets are done ({ds})")
    return ds


def stage_student(a) -> None:
    work = a.work
    extra = ["--dataset", str(subset_with_targets(work))] if a.only_done_targets else []
    budget = (["--epochs", str(a.steps // 50), "--iters-per-epoch", "50"] if a.steps
              else ["--time-budget-min", str(a.budget_min)])
    student = work / (f"student_{a.name}" if a.name else "student")
    if a.name and (work / "student" / "distillation" / "targets").is_dir():
        # the same teacher's targets (their key is checked per case): computed once for every student
        (student / "distillation").mkdir(parents=True, exist_ok=True)
        link = student / "distillation" / "targets"
        if not link.exists():
            link.symlink_to(work / "student" / "distillation" / "targets")
    cmd = [str(SEG3D), "distill", str(work / "teacher"), "-o", str(student), *budget, "--device", "cpu",
           "--features-scale", str(a.features_scale), "--resume", *([] if a.teacher_tta else ["--no-tta"]),
           *extra]
    sec = run(cmd, work / "student.log")
    log(f"student done: {sec:.0f} s (teacher targets + training)")


def build_nnunet_model(work: Path, nn_plans_dir: Path, nnunet_bin: Path) -> Path:
    """The teacher's 5 folds as an nnU-Net results folder (same network and weights, bench_predict's converter)."""
    from bench_predict import CONVERT, nnunet_plans_like

    from seg3d.core.model_folder import ModelFolder

    teacher = ModelFolder(work / "teacher")
    nn = work / "compare" / "nnunet_model"
    plans = nnunet_plans_like(json.loads((nn_plans_dir / "nnUNetPlans.json").read_text()), teacher.load_plan())
    nn.mkdir(parents=True, exist_ok=True)
    (nn / "plans.json").write_text(json.dumps(plans, indent=2))
    for name in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(nn_plans_dir / name, nn / name)
    c = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    plan = teacher.load_plan()
    args = {"in": plan.num_channels, "stages": c["n_stages"], "features": c["features_per_stage"],
            "kernels": c["kernel_sizes"], "strides": c["strides"], "classes": plan.num_classes}
    script = work / "compare" / "convert.py"
    script.write_text(CONVERT)
    for k in range(5):
        dst = nn / f"fold_{k}" / "checkpoint_final.pth"
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(nnunet_bin / "python"), str(script), str(teacher.checkpoint_path(k)), json.dumps(args),
                            str(dst)], check=True)
    return nn


def dice_per_class(pred_dir: Path, ids: list[str], values=(1, 2)) -> dict[str, float]:
    """Mean Dice per label value over the cases (a case where neither has the class counts as 1)."""
    from common import dice

    from seg3d.io.image import read_image

    out: dict[str, list[float]] = {str(v): [] for v in values}
    for cid in ids:
        p = read_image(pred_dir / f"{cid}.nii.gz").array
        r = read_image(DATA / "labelsTr" / f"{cid}.nii.gz").array
        for v in values:
            both = np.count_nonzero(p == v) + np.count_nonzero(r == v)
            out[str(v)].append(dice(p, r, v) if both else 1.0)
    return {k: float(np.mean(v)) for k, v in out.items()}


def stage_compare(a) -> None:
    from bench_predict import run_tree

    work = a.work
    split = json.loads((work / "split.json").read_text())
    ids = split["test"][:a.test_cases]
    cmp_dir = work / ("compare" if not a.tag else f"compare_{a.tag}")
    inp = cmp_dir / "input"
    inp.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        dst = inp / f"{cid}_0000.nii.gz"
        if not dst.exists():
            dst.symlink_to(DATA / "imagesTr" / f"{cid}_0000.nii.gz")
    nn_model = build_nnunet_model(work, a.nnunet_plans, a.nnunet_bin)
    teacher, student = work / "teacher", work / "student"
    common = ["--device", "cpu", "--no-postprocess"]
    runs = {
        "fold0_no_tta": [str(SEG3D), "predict", "-m", str(teacher), "--folds", "0", "--no-tta", *common],
        "fold0_tta": [str(SEG3D), "predict", "-m", str(teacher), "--folds", "0", *common],
        "teacher_5fold_tta": [str(SEG3D), "predict", "-m", str(teacher), *common],
        "student_no_tta": [str(SEG3D), "predict", "-m", str(student), "--no-tta", *common],
        "student_tta": [str(SEG3D), "predict", "-m", str(student), *common],
        "nnunet_5fold_tta": [str(a.nnunet_bin / "nnUNetv2_predict_from_modelfolder"), "-m", str(nn_model),
                             "-f", "0", "1", "2", "3", "4", "-device", "cpu"],
    }
    for extra in sorted(work.glob("student_*")):  # other students (e.g. bench_distill.py student --name half)
        if (extra / "model.json").is_file():
            runs[f"{extra.name}_no_tta"] = [str(SEG3D), "predict", "-m", str(extra), "--no-tta", *common]
    if a.fold_dice:  # every fold alone (with TTA): the ensemble's gain over its best fold
        runs.update({f"fold{k}_tta": [str(SEG3D), "predict", "-m", str(teacher), "--folds", str(k), *common]
                     for k in range(1, 5)})
    env = dict(os.environ, nnUNet_raw=str(cmp_dir), nnUNet_preprocessed=str(cmp_dir), nnUNet_results=str(cmp_dir))
    res: dict = {"cases": ids, "cpu": cpu_kind(), "load_before": os.getloadavg(), "tag": a.tag,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if a.only:  # rerun some configurations, keep the others' figures
        res = {**json.loads((cmp_dir / "result.json").read_text()), "rerun": a.only}
        runs = {k: v for k, v in runs.items() if k in a.only.split(",")}
    # warm-up, untimed: each model's one-time OpenVINO conversion (cached in its folder) on one case
    one = cmp_dir / "warmup_input"
    one.mkdir(exist_ok=True)
    if not (one / f"{ids[0]}_0000.nii.gz").exists():
        (one / f"{ids[0]}_0000.nii.gz").symlink_to(DATA / "imagesTr" / f"{ids[0]}_0000.nii.gz")
    for model in sorted({c[c.index("-m") + 1] for c in runs.values() if "-m" in c and c[1] == "predict"}):
        shutil.rmtree(cmp_dir / "warmup_output", ignore_errors=True)
        run([str(SEG3D), "predict", "-m", model, "-i", str(one), "-o", str(cmp_dir / "warmup_output"), *common])
    # repetitions interleaved (every configuration once, then again): a change of load hits all of them alike;
    # Dice comes from the first repetition (predictions are deterministic: later ones are checked equal)
    for rep in range(a.reps):
        for name, cmd in runs.items():
            dice_only = name.startswith("fold") and name not in ("fold0_no_tta", "fold0_tta")  # folds 1-4
            if rep >= (a.nnunet_reps if name.startswith("nnunet") else 1 if dice_only else a.reps):
                continue
            out = cmp_dir / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            at = 1 if name.startswith("nnunet") else 2  # after the program (nnU-Net) or the sub-command (seg3d)
            full = [*cmd[:at], "-i", str(inp), "-o", str(out), *cmd[at:]]
            log(f"rep {rep}: " + " ".join(full))
            load0 = os.getloadavg()[0]
            sec, gb, rc = run_tree(full, env)
            if rc != 0:
                sys.exit(f"{name} failed ({rc})")
            d = dice_per_class(out, ids)
            if rep == 0:
                res[name] = {"dice": d, "mean_dice": float(np.mean(list(d.values()))), "reps": []}
            elif d != res[name]["dice"]:
                sys.exit(f"{name}: repetition {rep} gave other masks than repetition 0 ({d} vs {res[name]['dice']})")
            r = res[name]
            r["reps"].append({"s_per_case": sec / len(ids), "seconds": sec, "peak_gb": gb, "load_1min_at_start": load0})
            r["s_per_case"] = min(x["s_per_case"] for x in r["reps"])  # best repetition
            r["peak_gb"] = max(x["peak_gb"] for x in r["reps"])
            log(f"{name} rep {rep}: {sec / len(ids):.2f} s/case, Dice {d}, mean {r['mean_dice']:.4f}, load {load0:.1f}")
            (cmp_dir / "result.json").write_text(json.dumps(res, indent=2))
    t, s0, nn = (res[k] for k in ("teacher_5fold_tta", "student_no_tta", "nnunet_5fold_tta"))
    res["goals"] = {
        "student_no_tta_minus_teacher": s0["mean_dice"] - t["mean_dice"],
        "student_speedup_vs_teacher": t["s_per_case"] / s0["s_per_case"],
        "student_speedup_vs_teacher_per_rep": [x["s_per_case"] / y["s_per_case"] for x, y in zip(t["reps"], s0["reps"])],
        "student_speedup_vs_nnunet": nn["s_per_case"] / s0["s_per_case"],
        "student_minus_nnunet_dice": s0["mean_dice"] - nn["mean_dice"],
    }
    folds = [k for k in res if k.startswith("fold") and k.endswith("_tta") and k != "fold0_no_tta"]
    if len(folds) == 5:
        best = max(folds, key=lambda k: res[k]["mean_dice"])
        res["ensemble_gain_over_best_fold"] = {"best_fold": best,
                                               "gain": t["mean_dice"] - res[best]["mean_dice"]}
    res["load_after"] = os.getloadavg()
    (cmp_dir / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("goals", "cpu") if k in res}, indent=2))


def cpu_kind() -> dict:
    import torch

    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["teacher", "student", "compare"])
    ap.add_argument("--work", type=Path, default=Path("/work/bench_distill"))
    ap.add_argument("--cv", type=int, default=155, help="cases in the cross-validation set (the rest: test)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--budget-min", type=float, default=5.0, help="teacher: per fold; student: in all")
    ap.add_argument("--steps", type=int, default=0,
                    help="a fixed number of training steps instead of --budget-min (teacher: per fold; student: in "
                         "all; a multiple of 50): the same CPU work whatever else runs on the machine")
    ap.add_argument("--no-teacher-tta", dest="teacher_tta", action="store_false",
                    help="student stage: teacher targets without mirroring TTA (8x cheaper)")
    ap.add_argument("--only-done-targets", action="store_true",
                    help="student stage: distil on the CV cases whose targets exist (when time runs out)")
    ap.add_argument("--test-cases", type=int, default=40, help="compare: the first N test cases")
    ap.add_argument("--tag", default="", help="compare: results in WORK/compare_TAG (e.g. unlocked)")
    ap.add_argument("--only", default="", help="compare: rerun these configurations (comma-separated)")
    ap.add_argument("--reps", type=int, default=1, help="compare: interleaved timing repetitions of each seg3d row")
    ap.add_argument("--nnunet-reps", type=int, default=1, help="compare: repetitions of nnU-Net's (long) row")
    ap.add_argument("--name", default="", help="student stage: WORK/student_NAME instead of WORK/student "
                    "(reuses WORK/student's teacher targets: same teacher, same key)")
    ap.add_argument("--features-scale", type=float, default=1.0, help="student stage: the student's width")
    ap.add_argument("--fold-dice", action="store_true", help="compare: also folds 1-4 alone with TTA")
    ap.add_argument("--nnunet-bin", type=Path, default=REPO / ".venv" / "bin")
    ap.add_argument("--nnunet-plans", type=Path, default=Path("/work/bench_distill/nnunet/pre/Dataset004_Hippocampus"),
                    help="nnU-Net's preprocessed folder of the CV set (nnUNetPlans.json, dataset.json, fingerprint)")
    a = ap.parse_args()
    {"teacher": stage_teacher, "student": stage_student, "compare": stage_compare}[a.stage](a)


if __name__ == "__main__":
    main()
