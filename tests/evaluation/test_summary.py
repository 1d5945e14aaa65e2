"""`seg3d summary`: tolerant readers, pooled CV Dice, post-processing decisions, recommendation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from seg3d.evaluation.summary import summarize_model, summarize_models, write_summary

LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def _avg(values):
    return float(np.mean([v for v in values if v is not None]))


def _model(root, name, arch, fold_cases, nnunet_style=False):
    """A model folder with per-fold validation summaries ({case: (dice anterior, dice posterior)})."""
    d = root / name
    d.mkdir()
    (d / "plans.json").write_text(json.dumps({"labels": LABELS}))
    (d / "model.json").write_text(json.dumps({"config": "3d_fullres", "arch": arch}))
    for k, cases in enumerate(fold_cases):
        v = d / f"fold_{k}" / "validation"
        v.mkdir(parents=True)
        if nnunet_style:
            obj = {"metric_per_case": [{"reference_file": f"/x/{c}.nii.gz", "metrics": {"1": {"Dice": a}, "2": {"Dice": p}}}
                                       for c, (a, p) in cases.items()],
                   "mean": {"1": {"Dice": _avg([a for a, _ in cases.values()])},
                            "2": {"Dice": _avg([p for _, p in cases.values()])}}}
        else:
            obj = {"per_class": {"anterior": {"dice_mean": 0.0}, "posterior": {"dice_mean": 0.0}},
                   "cases": [{"case_id": c, "classes": {"anterior": {"dice": a}, "posterior": {"dice": p}}}
                             for c, (a, p) in cases.items()]}
        (v / "summary.json").write_text(json.dumps(obj))
        (d / f"fold_{k}" / "log.csv").write_text("epoch,train_loss,elapsed_s\n0,1.0,30\n1,0.8,61\n2,0.7,95\n")
    (d / "postprocessing.json").write_text(json.dumps({"classes": [2], "fraction": 0.33, "min_volume_mm3": 0,
                                                       "evidence": {"1": {"dice_before": 0.8, "dice_after": 0.79,
                                                                          "cases": 4},
                                                                    "2": {"dice_before": 0.7, "dice_after": 0.72,
                                                                          "cases": 4}}}))
    return d


FOLDS_A = [{"c1": (0.9, 0.8), "c2": (0.7, 0.6)}, {"c3": (0.8, 0.9), "c4": (0.6, None), "c5": (1.0, 0.7)}]
FOLDS_B = [{"c1": (0.8, 0.8), "c2": (0.7, 0.5)}, {"c3": (0.8, 0.8), "c4": (0.6, 0.4), "c5": (0.9, 0.7)}]


@pytest.mark.parametrize("nnunet_style", [False, True])
def test_pooled_cv_dice_and_fold_table(tmp_path, nnunet_style):
    m = summarize_model(_model(tmp_path, "unet", "unet", FOLDS_A, nnunet_style))
    assert m["name"] == "3d_fullres unet" and m["classes"] == ["anterior", "posterior"]
    # pooled over the 5 validation cases, not the mean of the two fold means
    assert m["cv"]["dice"]["anterior"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.6 + 1.0) / 5)
    assert m["cv"]["dice"]["posterior"] == pytest.approx((0.8 + 0.6 + 0.9 + 0.7) / 4)  # null Dice excluded
    assert m["folds"][1]["dice"]["anterior"] == pytest.approx(0.8)
    assert m["folds"][0]["epochs"] == 3 and m["folds"][0]["training_time_s"] == 95
    assert m["postprocessing"]["posterior"].startswith("on") and m["postprocessing"]["anterior"].startswith("off")
    assert any("2 fold(s)" in n for n in m["notes"])


def test_compare_models_recommends_best_and_is_honest_about_the_ensemble(tmp_path):
    a = _model(tmp_path, "unet", "unet", FOLDS_A)
    b = _model(tmp_path, "unetpp", "unetpp", FOLDS_B)
    (a / "fold_0" / "progress.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    res = summarize_models([b, a])
    assert res["recommendation"][0].startswith("Use 3d_fullres unet ")
    assert any("Ensemble" in line and "not scored" in line for line in res["recommendation"])
    paths = write_summary(res, tmp_path / "out")
    md = paths[1].read_text()
    assert "progress.png" in md and "| **CV** |" in md
    assert json.loads(paths[0].read_text())["models"][0]["name"] == "3d_fullres unetpp"


def test_fold_without_results_and_cli(tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    d = _model(tmp_path, "unet", "unet", FOLDS_A)
    (d / "fold_2").mkdir()  # still training: no validation, no log
    runner = CliRunner()
    res = runner.invoke(app, ["summary", str(d), "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "fold_2: no validation" in res.output and "Use 3d_fullres unet" in res.output
    missing = runner.invoke(app, ["summary", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "model folder not found" in missing.output


def _reference_dataset(root, case_ids):
    """A dataset whose every case has the same small reference: anterior 4x4x4 box, posterior 4x2x4 beside it."""
    from seg3d.io.image import Geometry, write_image

    geo = Geometry((10, 9, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ds = root / "ds"
    ref = np.zeros((8, 9, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[2:6, 6:8, 2:6] = 2
    for cid in case_ids:
        write_image(np.zeros(ref.shape, np.float32), geo, ds / "imagesTr" / f"{cid}_0000.nii.gz")
        write_image(ref, geo, ds / "labelsTr" / f"{cid}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": LABELS,
                                                 "numTraining": len(case_ids), "file_ending": ".nii.gz"}))
    return ds, geo, ref


def test_cv_dice_computed_from_validation_label_maps_when_no_summary(tmp_path):
    from seg3d.io.image import write_image

    ds, geo, ref = _reference_dataset(tmp_path, ("a", "b"))
    pred = ref.copy()
    pred[2:6, 2:6, 2] = 0  # anterior loses 16 of 64 voxels: Dice 2·48/(48+64)
    m = tmp_path / "model"
    (m / "fold_0" / "validation").mkdir(parents=True)
    (m / "plans.json").write_text(json.dumps({"labels": LABELS, "extra": {"dataset_dir": str(ds)}}))
    write_image(pred, geo, m / "fold_0" / "validation" / "a.nii.gz")
    s = summarize_model(m)
    assert s["cv"]["dice"]["anterior"] == pytest.approx(96 / 112)
    assert s["cv"]["dice"]["posterior"] == 1.0 and s["cv"]["n_cases"] == 1


def test_ensemble_is_scored_from_averaged_validation_probabilities(tmp_path):
    from seg3d.inference.stages import write_probabilities
    from seg3d.io.image import write_image

    ds, geo, ref = _reference_dataset(tmp_path, ("a",))
    onehot = np.eye(3, dtype=np.float32)[ref].transpose(3, 0, 1, 2)  # (K, z, y, x)
    # model A is unsure on slab x=2 of anterior (0.45 vs 0.55 background): alone it loses it; model B is sure
    pa, pb = onehot.copy(), onehot.copy()
    pa[:, 2:6, 2:6, 2] = [[[0.55]], [[0.45]], [[0.0]]]
    pb[:, 2:6, 6:8, 5] = [[[0.6]], [[0.0]], [[0.4]]]  # B loses one posterior slab, A is sure there
    models = []
    for name, probs in (("unet", pa), ("unetpp", pb)):
        m = tmp_path / name
        v = m / "fold_0" / "validation"
        v.mkdir(parents=True)
        (m / "plans.json").write_text(json.dumps({"labels": LABELS, "extra": {"dataset_dir": str(ds)}}))
        (m / "model.json").write_text(json.dumps({"config": "3d_fullres", "arch": name}))
        labels = np.asarray([0, 1, 2])[probs.argmax(0)].astype(np.uint8)
        write_image(labels, geo, v / "a.nii.gz")
        write_probabilities(v / "a.npz", probs, [0, 1, 2])
        models.append(m)
    single = summarize_model(models[0])["cv"]["dice"]
    assert single["anterior"] == pytest.approx(96 / 112)  # A alone drops 16 of 64 anterior voxels
    res = summarize_models(models)
    ens = res["ensemble"]
    # averaged: anterior slab (0.55+1)/2 vs (0.45+0)/2 -> kept; posterior slab (1+0.4)/2 vs 0.3 -> kept: perfect
    assert ens["dice"] == {"anterior": 1.0, "posterior": 1.0} and ens["n_cases"] == 1
    assert any("Ensemble of the 2 models" in line and "predict with the ensemble" in line
               for line in res["recommendation"])
    assert "## Ensemble of the models" in write_summary(res, tmp_path / "out")[1].read_text()
    # a model without probabilities: not scored, and the reason is given
    (models[1] / "fold_0" / "validation" / "a.npz").unlink()
    res = summarize_models(models)
    assert res["ensemble"] is None and any("not scored" in line and ".npz" in line for line in res["recommendation"])
