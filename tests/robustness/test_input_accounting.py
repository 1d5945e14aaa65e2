"""Every file of a predict input folder is predicted, skipped with a reason or failed with a reason, and the
counts add up (issue 11, kind 2). A stand-in predictor keeps these fast; one CLI test runs the real model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import write_case
from test_batch import GEO, ThresholdPredictor

from seg3d.io.image import write_image
from seg3d.io.input_folder import list_case_folder
from seg3d.runners.local import predict_folder


def _img(path: Path, seed: int = 0) -> Path:
    """An image at ``path``; an upper-case ending (which ITK will not write) is written lower-case and renamed."""
    arr = np.random.default_rng(seed).normal(100, 20, GEO.shape).astype(np.float32)
    if path.name == path.name.lower():
        write_image(arr, GEO, path)
        return path
    low = path.with_name(path.name.lower() + ".tmp" + "".join(path.suffixes).lower())
    write_image(arr, GEO, low)
    low.rename(path)
    return path


def _run(in_dir, out_dir, channels=1, **kw):
    return predict_folder(in_dir, out_dir, model_dir=None, predictor=ThresholdPredictor(channels), **kw)


def _issue_folder(d: Path) -> Path:
    """The issue's six scans: three pairs that each map to one case id of a one-channel model."""
    for i, name in enumerate(["dup_0000.nii.gz", "dup_0000.nii", "scanA.nii.gz", "scanA_0000.nii.gz", "scanB.nii",
                              "scanB.mha"]):
        _img(d / name, i)
    return d


def test_the_issue_folder_reports_each_ambiguous_id_naming_both_files(tmp_path):
    d = _issue_folder(tmp_path / "in")
    _img(d / "fine.nii.gz", 9)
    s = _run(d, tmp_path / "out")
    assert s["predicted"] == 1 and sorted(p.name for p in (tmp_path / "out").glob("*.nii*")) == ["fine.nii.gz"]
    errors = sorted(f["error"] for f in s["failed"])
    assert len(errors) == 3
    for a, b in (("dup_0000.nii", "dup_0000.nii.gz"), ("scanA.nii.gz", "scanA_0000.nii.gz"),
                 ("scanB.mha", "scanB.nii")):
        line = next(e for e in errors if a in e)
        assert b in line and "ambiguous" in line
    c = s["input_counts"]
    assert (c["files"], c["predicted"], c["skipped"], c["failed"]) == (7, 1, 0, 6)


@pytest.mark.parametrize("names,channels,ambiguous", [
    (["a.NII.GZ", "a.nii.gz"], 1, {"a"}),                                  # endings differ only in case
    (["x_0000.nii.gz", "x_0000.nrrd", "x_0001.nii.gz"], 2, {"x"}),         # one channel twice, 2-channel model
    (["Case1.nii.gz", "case1.nii.gz"], 1, {"Case1"}),                      # outputs collide on macOS/Windows
    (["p.nii", "p_0000.nii.gz", "q_0000.nii"], 1, {"p"}),                  # plain + suffixed, different endings
    (["m.mhd", "m.nrrd"], 1, {"m"}),
])
def test_more_ambiguous_ids(tmp_path, names, channels, ambiguous):
    d = tmp_path / "in"
    for i, n in enumerate(names):
        _img(d / n, i)
    listing = list_case_folder(d, channels)
    failed = [i for i in listing.issues if i.status == "failed"]
    assert {i.case_id for i in failed} == ambiguous
    assert all(i.kind == "ambiguous" for i in failed)
    accounted = sum(len(p) for p in listing.cases.values()) + sum(len(i.paths) for i in listing.issues)
    assert accounted == len(list(d.iterdir()))  # .mhd brings its data file: also accounted
    ambiguous_files = {p.name for i in failed for p in i.paths}
    assert all(n in ambiguous_files for n in names if n.split("_")[0].split(".")[0] in
               {a.split("_")[0] for a in ambiguous} | {a.lower() for a in ambiguous})


def test_every_kind_of_other_entry_is_accounted_for(tmp_path):
    d = tmp_path / "in"
    write_case(d, "good", GEO)
    _img(d / "vol.mhd")                                              # + its data file vol.zraw
    (d / "notes.txt").write_text("hello")
    (d / "dataset.json").write_text("{}")
    (d / ".DS_Store").write_bytes(b"\0")
    (d / "sub").mkdir()
    (d / "gone.nii.gz").symlink_to(d / "missing.nii.gz")              # broken link
    (d / "empty.nii.gz").write_bytes(b"")                             # not an image after all
    (d / "bad_0001.nii.gz").write_bytes((d / "good_0000.nii.gz").read_bytes())  # channel 1 of a 1-channel model
    s = _run(d, tmp_path / "out")
    by_file = {Path(i["file"]).name: i for i in s["inputs"]}
    assert set(by_file) == {p.name for p in d.iterdir()}
    status = {n: (i["status"], i["kind"]) for n, i in by_file.items()}
    assert status["good_0000.nii.gz"][0] == status["vol.mhd"][0] == "predicted"
    assert status["vol.zraw"] == ("skipped", "data file") and "vol.mhd" in by_file["vol.zraw"]["reason"]
    assert status["notes.txt"] == status["dataset.json"] == ("skipped", "not an image")
    assert status[".DS_Store"] == ("skipped", "hidden") and status["sub"] == ("skipped", "folder")
    assert status["gone.nii.gz"][0] == status["empty.nii.gz"][0] == status["bad_0001.nii.gz"][0] == "failed"
    c = s["input_counts"]
    assert c["files"] == c["predicted"] + c["skipped"] + c["failed"] == len(list(d.iterdir()))
    m = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())
    assert m["input_counts"] == c and len(m["inputs"]) == c["files"]


def test_output_folder_inside_the_input_folder_is_skipped_and_the_input_folder_itself_refused(tmp_path):
    from seg3d.errors import Seg3dError

    d = tmp_path / "in"
    write_case(d, "a", GEO)
    s = _run(d, d / "masks")
    assert s["predicted"] == 1
    s = _run(d, d / "masks", continue_=True)
    assert {Path(i["file"]).name: i["kind"] for i in s["inputs"]}["masks"] == "folder"
    with pytest.raises(Seg3dError, match="is the input folder"):
        _run(d, d)


def test_empty_input_folder_is_an_error(tmp_path):
    from seg3d.errors import Seg3dError

    (tmp_path / "in").mkdir()
    with pytest.raises(Seg3dError, match="empty"):
        _run(tmp_path / "in", tmp_path / "out")


def test_parts_account_for_every_file_once(tmp_path):
    d = _issue_folder(tmp_path / "in")
    for i in range(3):
        _img(d / f"c{i}.nii.gz", i)
    totals = [_run(d, tmp_path / "out", num_parts=2, part_id=k)["input_counts"] for k in range(2)]
    assert sum(t["files"] for t in totals) == 9 and sum(t["failed"] for t in totals) == 6


def test_evaluate_reports_every_ambiguous_id_naming_both_files(tmp_path):
    from seg3d.errors import Seg3dError
    from seg3d.evaluation.evaluate import match_cases

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for d in (pred, ref):
        _img(d / "a.nii.gz")
        _img(d / "b.nii.gz")
    _img(pred / "a.nii")
    _img(pred / "b.mha")
    with pytest.raises(Seg3dError) as e:
        match_cases(pred, ref)
    msg = str(e.value)
    assert all(n in msg for n in ("a.nii.gz", "a.nii", "b.nii.gz", "b.mha")) and msg.count("ambiguous:") == 2


def test_check_reports_ambiguous_test_images(tmp_path):
    from seg3d.io.checks import check_dataset
    from seg3d.synthetic import make_phantom_dataset

    root = make_phantom_dataset(tmp_path / "ds", num_cases=2, num_test=1, seed=0, shape=(8, 16, 16))
    ts = root / "imagesTs"
    first = min(ts.iterdir())
    cid = first.name.split("_0000")[0]
    (ts / f"{cid}.nii.gz").write_bytes(first.read_bytes())
    problems = [p for p in check_dataset(root, workers=0) if not p.warning]
    assert any("ambiguous" in p.message and first.name in str(p) and f"{cid}.nii.gz" in str(p) for p in problems), \
        [str(p) for p in problems]


def test_cli_predict_on_the_issue_folder_exits_1_and_names_both_files(tmp_path):
    from inference_helpers import make_model_dir
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    d = _issue_folder(tmp_path / "in")
    _img(d / "fine.nii.gz", 9)
    model = make_model_dir(tmp_path / "model", _tiny_plan(), folds=(0,))
    res = CliRunner().invoke(app, ["predict", "-i", str(d), "-o", str(tmp_path / "out"), "-m", str(model),
                                   "--device", "cpu", "--no-tta"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "7 input file(s)" in res.output and "1 predicted" in res.output and "6 failed" in res.output
    for n in ("dup_0000.nii.gz", "dup_0000.nii", "scanA.nii.gz", "scanA_0000.nii.gz", "scanB.nii", "scanB.mha"):
        assert n in res.output


def _tiny_plan():
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology

    topo = Topology(kernel_sizes=((1, 3, 3), (3, 3, 3)), strides=((1, 1, 1), (1, 2, 2)), features=(4, 8))
    cfg = Configuration(name="3d_fullres", spacing=(2.0, 1.0, 1.0), patch_size=(4, 8, 8), batch_size=2,
                        topology=topo, median_shape=(6, 10, 12), estimated_memory_gb=0.1, precision="fp32",
                        mirror_axes=(0, 1, 2), anisotropic_axis=0)
    return Plan(dataset_name="T", channel_names=("MRI",), labels={"background": 0, "fg": 1},
                normalization=(ChannelNormalization("MRI", "zscore"),), configurations={"3d_fullres": cfg},
                original_median_spacing=(2.0, 1.0, 1.0), original_median_shape=(6, 10, 12), preset="test")


def test_evaluate_names_every_unreadable_prediction_at_once(tmp_path):
    from seg3d.errors import Seg3dError
    from seg3d.evaluation.evaluate import evaluate_folder

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for name in ("a", "b", "c"):
        mask = (np.arange(np.prod(GEO.shape)) % 3).reshape(GEO.shape).astype(np.uint8)
        write_image(mask, GEO, ref / f"{name}.nii.gz")
        write_image(mask, GEO, pred / f"{name}.nii.gz")
    for name in ("a", "c"):  # truncated, as an interrupted copy leaves them
        f = pred / f"{name}.nii.gz"
        f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(Seg3dError) as e:
        evaluate_folder(pred, ref, tmp_path / "eval", workers=0, pictures=0)
    msg = str(e.value)
    assert "2 case(s)" in msg and str(pred / "a.nii.gz") in msg and str(pred / "c.nii.gz") in msg
