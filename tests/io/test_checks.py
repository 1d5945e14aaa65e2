"""`check_dataset` / `seg3d check`: every planted fault is reported, naming the faulty file and the issue."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seg3d.io.checks import Problem, check_dataset
from seg3d.io.image import read_image, write_image


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from seg3d.synthetic import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("base") / "ds", num_cases=4, num_test=1, seed=3,
                                shape=(8, 20, 20))


@pytest.fixture
def ds(base_dir, tmp_path) -> Path:
    """A private copy of the small phantom dataset, free to break."""
    return Path(shutil.copytree(base_dir, tmp_path / "ds"))


def _rewrite(path: Path, array=None, **geo_changes) -> None:
    img = read_image(path)
    arr = img.array if array is None else array(img.array)
    geo = dataclasses.replace(img.geometry, **geo_changes)
    if "size" not in geo_changes and tuple(reversed(arr.shape)) != geo.size:
        geo = dataclasses.replace(geo, size=tuple(reversed(arr.shape)))
    write_image(arr, geo, path)


def _edit_json(ds: Path, **changes) -> None:
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(changes)
    (ds / "dataset.json").write_text(json.dumps(meta))


def _set(arr, index, value, dtype=None):
    out = np.array(arr, dtype=dtype or arr.dtype)
    out[index] = value
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _plant(ds: Path, fault: str) -> tuple[Path, list[str]]:
    """Plant one fault; return the file that must be named and words the message must contain."""
    img0, lab0 = ds / "imagesTr/phantom_000_0000.nii.gz", ds / "labelsTr/phantom_000.nii.gz"
    img1, lab1 = ds / "imagesTr/phantom_001_0000.nii.gz", ds / "labelsTr/phantom_001.nii.gz"
    if fault == "missing_label":
        lab1.unlink()
        return lab1, ["missing", "label"]
    if fault == "truncated_gzip":
        _truncate(img1)
        return img1, ["truncated"]
    if fault == "not_an_image":
        lab0.write_text("this is not an image")
        return lab0, ["not a readable image"]
    if fault == "size":
        _rewrite(lab0, array=lambda a: a[:, :-2, :])
        return lab0, ["size"]
    if fault == "spacing":
        g = read_image(lab0).geometry
        _rewrite(lab0, spacing=tuple(s * 1.1 for s in g.spacing))
        return lab0, ["spacing"]
    if fault == "origin":
        g = read_image(lab1).geometry
        _rewrite(lab1, origin=(g.origin[0] + 5.0, *g.origin[1:]))
        return lab1, ["origin"]
    if fault == "direction":
        m = read_image(lab1).geometry.direction_matrix.copy()
        m[:, 0] *= -1
        _rewrite(lab1, direction=tuple(m.ravel()))
        return lab1, ["direction"]
    if fault == "undeclared_label":
        _rewrite(lab0, array=lambda a: _set(a, (0, 0, 0), 7))
        return lab0, ["7", "not declared"]
    if fault == "non_integer_label":
        _rewrite(lab1, array=lambda a: _set(a, (1, 1, 1), 1.5, np.float32))
        return lab1, ["non-integer", "1.5"]
    if fault == "nan_inf":
        _rewrite(img0, array=lambda a: _set(_set(a, (1, 2, 3), np.nan), (0, 0, 0), np.inf))
        return img0, ["2 voxel(s)", "NaN"]
    if fault == "image_2d":
        a = read_image(img1).array[3]
        write_image(a, _geo2d(a.shape), img1)
        return img1, ["2D"]
    if fault == "image_4d":
        _write_4d(img0, [read_image(img0).array] * 2)
        return img0, ["4D", "one channel"]
    if fault == "num_training":
        _edit_json(ds, numTraining=9)
        return ds / "dataset.json", ["numTraining", "9"]
    if fault == "test_image_nan":
        p = ds / "imagesTs/phantom_004_0000.nii.gz"
        _rewrite(p, array=lambda a: _set(a, (0, 1, 1), np.nan))
        return p, ["NaN"]
    if fault == "label_without_image":
        p = ds / "labelsTr/orphan.nii.gz"
        shutil.copy(lab0, p)
        return p, ["without any image"]
    if fault == "bad_file_name":
        p = ds / "imagesTr/phantom_000.nii.gz"
        shutil.copy(img0, p)
        return p, ["does not follow"]
    raise AssertionError(fault)


def _geo2d(shape):
    from seg3d.io.image import Geometry

    return Geometry(tuple(reversed(shape)), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


def _write_4d(path: Path, arrays, spacing=(1.0, 1.0, 3.0)) -> None:
    """A 4D NIfTI (channels along the 4th axis), as the Medical Segmentation Decathlon stores them."""
    import SimpleITK as sitk

    vols = []
    for a in arrays:
        v = sitk.GetImageFromArray(np.ascontiguousarray(a))
        v.SetSpacing(spacing)
        vols.append(v)
    sitk.WriteImage(sitk.JoinSeries(vols), str(path), True)


FAULTS = ["missing_label", "truncated_gzip", "not_an_image", "size", "spacing", "origin", "direction",
          "undeclared_label", "non_integer_label", "nan_inf", "image_2d", "image_4d", "num_training",
          "test_image_nan", "label_without_image", "bad_file_name"]


def _find(problems: list[Problem], path: Path, words: list[str]) -> Problem:
    hits = [p for p in problems if p.path is not None and Path(p.path).resolve() == path.resolve()]
    assert hits, f"no problem names {path}: {[str(p) for p in problems]}"
    good = [p for p in hits if all(w in p.message for w in words)]
    assert good, f"problems for {path.name} do not mention {words}: {[p.message for p in hits]}"
    return good[0]


def test_clean_dataset_has_no_problem(ds):
    assert check_dataset(ds, workers=0) == []


@pytest.mark.parametrize("fault", FAULTS)
def test_each_planted_fault_names_the_file_and_the_issue(ds, fault):
    path, words = _plant(ds, fault)
    problems = check_dataset(ds, workers=0)
    _find(problems, path, words)
    # nothing else is blamed: every other file of the dataset is fine
    assert all(Path(p.path).resolve() == path.resolve() for p in problems), [str(p) for p in problems]


def test_all_faults_at_once_are_all_reported(ds):
    expected = [_plant(ds, f) for f in ("truncated_gzip", "undeclared_label", "origin", "nan_inf",
                                        "num_training", "test_image_nan", "bad_file_name")]
    problems = check_dataset(ds, workers=2)
    for path, words in expected:
        _find(problems, path, words)


def _two_channels(ds: Path, skip: str | None = None) -> None:
    for p in sorted((ds / "imagesTr").glob("*_0000.nii.gz")):
        if skip is None or not p.name.startswith(skip):
            shutil.copy(p, p.with_name(p.name.replace("_0000", "_0001")))
    for p in sorted((ds / "imagesTs").glob("*_0000.nii.gz")):
        shutil.copy(p, p.with_name(p.name.replace("_0000", "_0001")))
    _edit_json(ds, channel_names={"0": "MRI", "1": "T2"})


def test_missing_channel_and_channel_geometry(ds):
    _two_channels(ds, skip="phantom_002")
    ch1 = ds / "imagesTr/phantom_003_0001.nii.gz"
    g = read_image(ch1).geometry
    _rewrite(ch1, spacing=(g.spacing[0], g.spacing[1], g.spacing[2] * 2))
    problems = check_dataset(ds, workers=0)
    _find(problems, ds / "imagesTr/phantom_002_0001.nii.gz", ["missing", "channel 1", "T2"])
    _find(problems, ch1, ["channel geometry differs", "spacing"])
    assert len(problems) == 2


@pytest.mark.parametrize("text, words", [("{not json", ["invalid JSON"]),
                                         (json.dumps({"channel_names": {"0": "CT"}, "labels": {"a": 1}}),
                                          ["background"]),
                                         (json.dumps({"channel_names": {"0": "CT"},
                                                      "labels": {"background": 0, "a": 1.5}}), ["non-integer"]),
                                         (json.dumps({"labels": {"background": 0}}), ["channel_names"])])
def test_invalid_dataset_json_is_one_problem(ds, text, words):
    (ds / "dataset.json").write_text(text)
    problems = check_dataset(ds)
    assert len(problems) == 1
    _find(problems, ds / "dataset.json", words)


def test_missing_folder_is_a_problem_not_a_traceback(tmp_path):
    problems = check_dataset(tmp_path / "nope")
    assert len(problems) == 1 and "not found" in problems[0].message


def test_problem_str_names_the_file():
    assert str(Problem(Path("/d/x.nii.gz"), "broken")) == "/d/x.nii.gz: broken"
    assert str(Problem(None, "broken")) == "broken"


# ---- Medical Segmentation Decathlon layout ----------------------------------------------------------------

def _msd(base_dir: Path, out: Path) -> Path:
    """An MSD-style copy of the phantom: one 4D file per case holding 2 channels, 'modality', 'training'."""
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    (out / "imagesTs").mkdir()
    training = []
    for p in sorted((base_dir / "imagesTr").glob("*_0000.nii.gz")):
        cid = p.name[: -len("_0000.nii.gz")]
        img = read_image(p)
        lab = read_image(base_dir / "labelsTr" / f"{cid}.nii.gz")
        sp = img.geometry.spacing
        _write_4d(out / "imagesTr" / f"{cid}.nii.gz", [img.array, img.array * 0.5], spacing=sp)
        from seg3d.io.image import Geometry

        geo = Geometry(lab.geometry.size, sp, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        write_image(lab.array, geo, out / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    t = read_image(base_dir / "imagesTs/phantom_004_0000.nii.gz")
    _write_4d(out / "imagesTs/phantom_004.nii.gz", [t.array, t.array], spacing=t.geometry.spacing)
    meta = {"name": "PhantomMSD", "modality": {"0": "MRI", "1": "T2"},
            "labels": {"0": "background", "1": "core", "2": "rim", "3": "satellite"},
            "numTraining": len(training), "training": training, "test": ["./imagesTs/phantom_004.nii.gz"]}
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


def test_msd_layout_is_read_and_checked(base_dir, tmp_path):
    from seg3d.io.layout import load_dataset

    msd = _msd(base_dir, tmp_path / "msd")
    d = load_dataset(msd)
    assert d.layout == "msd" and d.channel_names == ("MRI", "T2") and len(d.cases) == 4
    assert check_dataset(msd, workers=0) == []

    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][1]))  # one case listed twice
    (msd / "dataset.json").write_text(json.dumps(meta))
    a = read_image(base_dir / "imagesTr/phantom_002_0000.nii.gz").array
    bad4d = msd / "imagesTr/phantom_002.nii.gz"
    _write_4d(bad4d, [a, a, a])  # 3 channels where 2 are declared
    problems = check_dataset(msd, workers=0)
    dup = _find(problems, msd / "dataset.json", ["duplicate", "phantom_001"])
    assert "phantom_001.nii.gz" in dup.message
    _find(problems, msd / "dataset.json", ["numTraining"])
    _find(problems, bad4d, ["2 channels", "4D"])
    assert len(problems) == 3, [str(p) for p in problems]


# ---- the CLI -----------------------------------------------------------------------------------------------

def test_cli_exit_codes(ds):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(app, ["check", str(ds), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "OK: 4 cases" in res.output and "1 channel" in res.output and "core" in res.output

    path, _ = _plant(ds, "undeclared_label")
    _plant(ds, "missing_label")
    res = runner.invoke(app, ["check", str(ds), "--workers", "0"])
    assert res.exit_code == 1
    assert path.name in res.output and "not declared" in res.output
    assert "phantom_001.nii.gz" in res.output and "2 problem(s)" in res.output

    res = runner.invoke(app, ["check", str(ds / "missing")])
    assert res.exit_code == 1 and "not found" in res.output


def test_missing_labels_folder_is_one_problem(ds):
    shutil.rmtree(ds / "labelsTr")
    problems = check_dataset(ds, workers=0)
    assert len(problems) == 1 and "labelsTr" in str(problems[0]), [str(p) for p in problems]


def test_empty_file_is_not_readable(ds):
    p = ds / "imagesTr/phantom_003_0000.nii.gz"
    p.write_bytes(b"")
    _find(check_dataset(ds, workers=0), p, ["not a readable image"])
