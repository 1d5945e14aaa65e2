"""The end-to-end demo behind `make demo`: phantom (or a real dataset) → check → plan → train → predict → evaluate.

Held-out cases are never trained on: the phantom writes separate test cases (imagesTs/labelsTs); for a real
dataset without labelled test cases, fold 0 is trained and its validation cases are predicted and evaluated.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seg3d.core.model_folder import ModelFolder
from seg3d.errors import Seg3dError
from seg3d.evaluation import evaluate_folder
from seg3d.io.layout import load_dataset
from seg3d.planning import plan_dataset
from seg3d.progress import LogFn, ProgressFn, log_info
from seg3d.runners.local import predict_folder
from seg3d.synthetic import make_phantom_dataset
from seg3d.training import train


@dataclass
class DemoResult:
    out_dir: Path
    dataset_dir: Path
    plan_dir: Path
    model_dir: Path
    predictions_dir: Path
    report_dir: Path
    held_out_cases: list[str]
    timings_s: dict[str, float] = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symlinks
        import shutil

        shutil.copy2(src, dst)


def _held_out_folders(dataset_dir: Path, model_dir: Path, work: Path) -> tuple[Path, Path, list[str]]:
    """Input/reference folders of cases the model did not train on."""

    ds = load_dataset(dataset_dir)
    if (dataset_dir / "imagesTs").is_dir() and (dataset_dir / "labelsTs").is_dir():
        ids = [c.case_id for c in ds.test_cases if (dataset_dir / "labelsTs" / f"{c.case_id}{ds.file_ending}").is_file()]
        return dataset_dir / "imagesTs", dataset_dir / "labelsTs", ids
    splits = json.loads(ModelFolder(model_dir).splits_json.read_text())
    ids = list(splits[0]["val"])
    by_id = {c.case_id: c for c in ds.cases}
    img_dir, lab_dir = work / "heldout" / "images", work / "heldout" / "labels"
    for cid in ids:
        case = by_id[cid]
        for i, p in enumerate(case.images):
            _link_or_copy(p, img_dir / f"{cid}_{i:04d}{ds.file_ending}")
        _link_or_copy(case.label, lab_dir / f"{cid}{ds.file_ending}")
    return img_dir, lab_dir, ids


def run_demo(out_dir: str | Path = "demo_output", data: str | Path | None = None, minutes: float = 6.0,
             preset: str = "cpu", workers: int | None = None, num_phantoms: int = 20, num_test: int = 6,
             phantom_shape: tuple[int, int, int] = (20, 64, 64),
             log: LogFn = log_info, progress_factory: Callable[[str], ProgressFn | None] | None = None,
             device: str = "auto") -> DemoResult:
    """Run the whole pipeline and return where everything went and the evaluation summary."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prog = progress_factory or (lambda name: None)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if data is None:

        dataset_dir = out / "Dataset900_Phantom"
        if not (dataset_dir / "dataset.json").is_file():
            log(f"generating {num_phantoms} phantom training cases and {num_test} held-out cases in {dataset_dir}")
            make_phantom_dataset(dataset_dir, num_cases=num_phantoms, num_test=num_test, seed=0,
                                 shape=phantom_shape)
        fold: int | str = "all"
    else:
        dataset_dir = Path(data)
        if not (dataset_dir / "dataset.json").is_file():
            raise Seg3dError("not a dataset folder (no dataset.json)", dataset_dir)
        fold = "all" if (dataset_dir / "labelsTs").is_dir() else 0
    timings["data"] = time.perf_counter() - t

    # one working folder per dataset: a demo on real data after the phantom demo (or the reverse) must not
    # reuse the other's plan, splits and model
    work = out if data is None else out / dataset_dir.resolve().name
    plan_dir = work / "plan"
    t = time.perf_counter()
    log(f"planning {dataset_dir} with the '{preset}' preset (checks run first)")
    plan_dataset(dataset_dir, plan_dir, preset=preset, workers=workers, progress=prog("plan"))
    timings["plan"] = time.perf_counter() - t

    model_dir = work / "model"
    t = time.perf_counter()
    log(f"training fold {fold} for {minutes:g} min on a CPU budget")
    # validate=False: the held-out cases are predicted and evaluated just below; the trainer's end-of-fold
    # validation would predict the same cases a second time
    train(plan_dir, config="3d_fullres", fold=fold, model_dir=model_dir, time_budget_min=minutes,
          device=device, progress=prog("train"), log=log, validate=False)
    timings["train"] = time.perf_counter() - t

    img_dir, ref_dir, ids = _held_out_folders(dataset_dir, model_dir, work)
    pred_dir = work / "predictions"
    t = time.perf_counter()
    log(f"predicting {len(ids)} held-out case(s) into {pred_dir}")
    predict_folder(img_dir, pred_dir, model_dir, device=device, progress=prog("predict"))
    timings["predict"] = time.perf_counter() - t

    report_dir = work / "report"
    t = time.perf_counter()
    log(f"evaluating against {ref_dir}")
    evaluation = evaluate_folder(pred_dir, ref_dir, report_dir, dataset_json=dataset_dir / "dataset.json",
                                 images_dir=img_dir, progress=prog("evaluate"), model_dir=model_dir)
    timings["evaluate"] = time.perf_counter() - t
    return DemoResult(out, dataset_dir, plan_dir, model_dir, pred_dir, report_dir, ids, timings, evaluation)
