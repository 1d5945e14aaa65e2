"""seg3d distill end to end on phantoms: teacher targets = predict, exact resume, unlabelled folders, the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from interrupt import Interrupted, interrupt_at

QUIET = {"log": lambda s: None}


def test_teacher_targets_equal_a_direct_predict(small_teacher, phantom_dir, tmp_path):
    """Targets (preprocessed grid, float16), taken back to the input grid, are `seg3d predict`'s probabilities."""
    from seg3d.core.plan import Plan
    from seg3d.distill.targets import TargetStorage, TeacherEnsemble, compute_targets, decode, load_targets
    from seg3d.inference import Predictor
    from seg3d.io.layout import load_dataset, read_case_images
    from seg3d.preprocessing import revert_to_original
    from seg3d.preprocessing.cache import build_cache

    plan = Plan.load(small_teacher / "plans.json")
    cache = build_cache(phantom_dir, plan, "3d_fullres", tmp_path / "cache", workers=0)
    case = "phantom_003"
    ens = TeacherEnsemble([small_teacher], device="cpu", precision="fp32")  # both folds, TTA
    stats = compute_targets(ens, {case: cache}, tmp_path / "targets", TargetStorage(), **QUIET)
    assert stats["computed"] == 1
    p, idx, _ = load_targets(tmp_path / "targets", case)
    assert p.dtype == np.float16 and idx is None and p.shape[0] == 4
    on_input = revert_to_original(torch.from_numpy(decode(p, idx, 4)), cache.properties(case), plan,
                                  plan.config("3d_fullres"), out="probabilities")
    ds = {c.case_id: c for c in load_dataset(phantom_dir).cases}
    data, geo = read_case_images(ds[case], 1)
    direct = Predictor(small_teacher, device="cpu", precision="fp32", postprocess=False).predict_case(
        data, geo, return_probabilities=True)
    assert direct.probabilities.shape == tuple(np.asarray(on_input).shape)
    np.testing.assert_allclose(np.asarray(on_input, np.float32), direct.probabilities.astype(np.float32),
                               atol=2e-3)
    # a second run reuses them; another teacher setting (no TTA) recomputes
    assert compute_targets(ens, {case: cache}, tmp_path / "targets", **QUIET)["reused"] == 1
    other = TeacherEnsemble([small_teacher], tta=False, device="cpu", precision="fp32")
    assert compute_targets(other, {case: cache}, tmp_path / "targets", **QUIET)["computed"] == 1


def _settings(**kw):
    from seg3d.distill import DistillSettings

    base = {"folds": ["0"], "tta": False, "epochs": 2, "iters_per_epoch": 3, "device": "cpu", "precision": "fp32",
            "workers": 0}
    return DistillSettings(**{**base, **kw})


def test_interrupted_distillation_resumes_exactly(small_teacher, tmp_path):
    from seg3d.distill import distill

    a, b = tmp_path / "a", tmp_path / "b"
    distill([small_teacher], a, _settings(), **QUIET)

    # killed at the first iteration of epoch 1, after epoch 0's checkpoint
    with pytest.raises(Interrupted):
        distill([small_teacher], b, _settings(), progress=interrupt_at(4), **QUIET)
    assert not (b / "fold_all" / "checkpoint_final.pt").exists()
    res = distill([small_teacher], b, _settings(resume=True), **QUIET)
    assert res["teacher_targets"]["computed"] == 0  # the targets were kept
    wa = torch.load(a / "fold_all" / "checkpoint_final.pt", weights_only=False)["model"]
    wb = torch.load(b / "fold_all" / "checkpoint_final.pt", weights_only=False)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_student_is_an_ordinary_model_folder_with_provenance(small_teacher, tmp_path, phantom_dir):
    from seg3d.core.model_folder import ModelFolder
    from seg3d.distill import distill
    from seg3d.inference import Predictor
    from seg3d.io.layout import load_dataset, read_case_images

    student = tmp_path / "student"
    distill([small_teacher, small_teacher], student, _settings(features_scale=0.5, temperature=2.0, alpha=0.7),
            **QUIET)
    info = json.loads((student / "model.json").read_text())
    prov = info["provenance"]
    assert [t["weights_sha256"] for t in prov["teachers"]] == [ModelFolder(small_teacher).weights_checksum(["0"])] * 2
    assert prov["teachers"][0]["folds"] == ["0"] and prov["tta"] is False
    assert (prov["temperature"], prov["alpha"], prov["soft_loss"]) == (2.0, 0.7, "kl")
    assert prov["data"]["labelled_cases"] == 8 and prov["student"]["features"] == [4, 8, 16]
    assert "postprocessing" in prov
    case = load_dataset(phantom_dir).test_cases[0]
    data, geo = read_case_images(case, 1)
    labels = Predictor(student, device="cpu").predict_case(data, geo)
    assert labels.shape == geo.shape
    # `seg3d summary` reads it like any model folder (no cross-validation of its own: said, not an error)
    from seg3d.evaluation.summary import summarize_models

    summary = summarize_models([student])
    assert summary["models"][0]["folds"] and summary["ensemble"] is None
    # `seg3d export` bundles it (fold "all"), and the bundle predicts what the folder predicts
    from seg3d.export import export_bundle

    bundle = export_bundle(student, tmp_path / "bundle")
    from_bundle = Predictor(bundle.path, device="cpu", precision="fp32").predict_case(data, geo)
    from_folder = Predictor(student, device="cpu", backend="openvino", precision="fp32").predict_case(data, geo)
    assert bundle.manifest().folds == ("all",)
    np.testing.assert_array_equal(from_bundle, from_folder)


def test_unlabelled_folder_with_a_bad_file_is_reported_and_skipped(small_teacher, phantom_dir, tmp_path):
    from seg3d.distill import distill

    unl = tmp_path / "site_scans"
    unl.mkdir()
    for p in sorted((phantom_dir / "imagesTs").iterdir()):
        shutil.copy(p, unl / p.name)
    good = len(list(unl.iterdir()))
    (unl / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not a NIfTI")
    lines: list[str] = []
    res = distill([small_teacher], tmp_path / "student", _settings(unlabelled=(str(unl),)), log=lines.append)
    rec = res["unlabelled"][0]
    assert rec["cases"] == good
    assert len(rec["skipped"]) == 1 and rec["skipped"][0]["files"] == [str(unl / "broken_0000.nii.gz")]
    assert any("broken" in line for line in lines)
    assert res["teacher_targets"]["computed"] == 8 + good
    prov = json.loads((tmp_path / "student" / "model.json").read_text())["provenance"]
    assert prov["data"]["unlabelled"][0]["skipped"][0]["reason"]


def test_cli_distill_and_user_errors(small_teacher, tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    r = runner.invoke(app, ["distill", str(small_teacher), "-o", str(tmp_path / "s"), "--folds", "0", "--no-tta",
                            "--epochs", "1", "--iters-per-epoch", "2", "--device", "cpu", "--precision", "fp32",
                            "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "fold_all" / "checkpoint_final.pt").is_file()
    r = runner.invoke(app, ["distill", str(small_teacher), "-o", str(tmp_path / "s2"), "--alpha", "2"])
    assert r.exit_code == 1 and "--alpha" in r.output
    r = runner.invoke(app, ["distill", str(tmp_path / "nope"), "-o", str(tmp_path / "s3")])
    assert r.exit_code == 1 and "model folder not found" in r.output
    r = runner.invoke(app, ["distill", str(small_teacher), "-o", str(tmp_path / "s"), "--folds", "0", "--no-tta"])
    assert r.exit_code == 1 and "already holds a distilled student" in r.output
