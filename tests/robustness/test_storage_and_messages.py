"""Outputs are whole, storage failures are reported per case (kind 3), and no message names a seg3d temporary
file (kind 4)."""
from __future__ import annotations

import errno
import gzip
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import write_case
from nifti_variants import oblique, rotation
from test_batch import GEO, ThresholdPredictor

from seg3d.errors import Seg3dError
from seg3d.io.image import incomplete_reason, read_image, write_image
from seg3d.runners.local import predict_folder


def _run(in_dir, out_dir, **kw):
    logs: list[str] = []
    s = predict_folder(in_dir, out_dir, model_dir=None, predictor=ThresholdPredictor(), log=logs.append, **kw)
    return s, logs


def _folder(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "in"
    for i in range(n):
        write_case(d, f"case{i}", GEO, seed=i)
    return d


# ---- completeness ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd", ".mhd", ".nhdr"])
def test_continue_redoes_a_truncated_output(tmp_path, ending):
    d = tmp_path / "in"
    for i in range(2):
        arr = np.random.default_rng(i).normal(100, 20, GEO.shape).astype(np.float32)
        write_image(arr, GEO, d / f"c{i}{ending}", compress=ending != ".nii")
    out = tmp_path / "out"
    _run(d, out)
    cut = out / f"c0{ending}"
    data_file = cut if ending not in (".mhd", ".nhdr") else next(p for p in out.iterdir() if p.name.startswith("c0.")
                                                                  and p != cut)
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    assert incomplete_reason(cut, GEO.size) is not None
    s, logs = _run(d, out, continue_=True)
    assert (s["predicted"], s["skipped"]) == (1, 1)
    assert any("redoing" in line and str(cut) in line for line in logs)
    assert incomplete_reason(cut, GEO.size) is None and read_image(cut).geometry == GEO


def test_completeness_catches_damage_inside_the_gzip_stream(tmp_path):
    p = tmp_path / "m.nii.gz"
    write_image(np.zeros(GEO.shape, np.uint8), GEO, p)
    raw = bytearray(gzip.decompress(p.read_bytes()))
    p.write_bytes(gzip.compress(bytes(raw))[:-8] + b"\0" * 8)  # CRC and length wrong
    assert "damaged" in incomplete_reason(p, GEO.size)
    p.write_bytes(gzip.compress(bytes(raw[:-20])))              # valid gzip, too little data
    assert "truncated" in incomplete_reason(p, GEO.size)
    p.write_bytes(gzip.compress(bytes(raw)))
    assert incomplete_reason(p, GEO.size) is None
    assert "size" in incomplete_reason(p, (1, 2, 3))


# ---- storage failures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission denied"), (errno.EDQUOT, "quota")])
def test_a_full_or_locked_disk_fails_the_case_naming_the_output_and_the_rest_go_on(tmp_path, monkeypatch, code,
                                                                                    words):
    import nibabel

    d = _folder(tmp_path, 3)
    real_save = nibabel.save

    def save(img, path):
        if "case1" in Path(path).name:
            Path(path).write_bytes(b"half")
            raise OSError(code, os.strerror(code))
        real_save(img, path)

    monkeypatch.setattr(nibabel, "save", save)
    out = tmp_path / "out"
    s, _ = _run(d, out)
    assert s["predicted"] == 2 and len(s["failed"]) == 1
    err = s["failed"][0]["error"]
    assert err.startswith(str(out / "case1.nii.gz")) and words in err and ".part" not in err
    assert sorted(p.name for p in out.iterdir()) == ["case0.nii.gz", "case2.nii.gz", "predict_manifest.json"]
    m = json.loads((out / "predict_manifest.json").read_text())
    assert m["input_counts"]["failed"] == 1 and m["input_counts"]["predicted"] == 2


@pytest.mark.parametrize("ending", [".nrrd", ".nhdr", ".mha", ".nii"])
def test_a_writer_that_silently_leaves_a_short_file_is_caught(tmp_path, monkeypatch, ending):
    """SimpleITK's NRRD (and NIfTI) writers return normally on a full disk, leaving a short file."""
    import SimpleITK as sitk

    real = sitk.WriteImage

    def short(img, path, *a, **kw):
        real(img, path, *a, **kw)
        for f in Path(path).parent.iterdir():
            f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size * 2 // 3)])

    monkeypatch.setattr(sitk, "WriteImage", short)
    mask = np.random.default_rng(0).integers(0, 4, GEO.shape).astype(np.uint8)
    with pytest.raises(Seg3dError) as e:
        write_image(mask, GEO, tmp_path / "out" / f"m{ending}", compress=ending != ".nii")
    assert str(e.value).startswith(str(tmp_path / "out" / f"m{ending}")) and "incomplete" in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_simpleitk_write_errors_name_the_output_not_the_temporary_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def broken(img, path, *a, **kw):
        raise RuntimeError(f"ITK ERROR: ImageFileWriter: Could not open file {path} for writing")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(Seg3dError) as e:
        write_image(np.zeros(GEO.shape, np.uint8), GEO, tmp_path / "x.mha")
    assert str(e.value).startswith(str(tmp_path / "x.mha")) and ".part" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_manifest_that_cannot_be_written_is_a_note_and_the_summary_still_comes(tmp_path, monkeypatch):
    import seg3d.inference.stages as acc

    def no_space(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(acc, "write_json_atomic", no_space)
    s, logs = _run(_folder(tmp_path, 2), tmp_path / "out")
    assert s["predicted"] == 2 and s["manifest"] is None
    assert "no space left" in s["manifest_note"] and s["manifest_note"] in logs


def test_cli_storage_failure_prints_the_summary_and_exits_1(tmp_path, monkeypatch):
    import nibabel
    from inference_helpers import make_model_dir
    from seg3d.cli.main import app
    from test_input_accounting import _tiny_plan
    from typer.testing import CliRunner

    import seg3d.inference.stages as acc

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nibabel, "save", full)
    monkeypatch.setattr(acc, "write_json_atomic", full)
    model = make_model_dir(tmp_path / "model", _tiny_plan(), folds=(0,))
    res = CliRunner().invoke(app, ["predict", "-i", str(_folder(tmp_path, 2)), "-o", str(tmp_path / "out"),
                                   "-m", str(model), "--device", "cpu", "--no-tta"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.output.count("no space left on the device") >= 3  # two cases and the manifest
    assert "failed 2 of 2" in res.output and "could not be written" in res.output


def test_output_location_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    import seg3d.inference.predictor as pred

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(pred, "Predictor", no_model)
    d = _folder(tmp_path, 1)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(Seg3dError, match="is a file"):
        predict_folder(d, tmp_path / "afile" / "out", model_dir=tmp_path)
    with pytest.raises(Seg3dError, match="input folder not found"):
        predict_folder(tmp_path / "nope", tmp_path / "out", model_dir=tmp_path)


def test_a_read_only_output_folder_is_refused_before_work(tmp_path, monkeypatch):
    import tempfile

    from seg3d import atomic

    def ro(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", ro)
    with pytest.raises(Seg3dError) as e:
        atomic.check_output_folder(tmp_path / "out")
    assert str(tmp_path / "out") in str(e.value) and "read-only" in str(e.value)
    assert not (tmp_path / "out").exists()


# ---- detached formats ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_detached_header_names_its_final_data_file_and_nothing_is_left_over(tmp_path, ending):
    out = tmp_path / f"m{ending}"
    mask = (np.arange(np.prod(GEO.shape)) % 3).reshape(GEO.shape).astype(np.uint8)
    write_image(mask, GEO, out)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and all(not n.startswith(".") for n in names)
    assert ".part" not in out.read_text(errors="replace")
    back = read_image(out)
    assert back.geometry == GEO and np.array_equal(back.array, mask)


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".mhd", ".nhdr"])
def test_other_formats_keep_an_oblique_geometry_exactly(tmp_path, ending):
    from seg3d.io.image import Geometry
    from seg3d.io.writers import write_like

    g = Geometry(GEO.size, (0.7, 1.3, 2.9), (-12.5, 33.25, 7.125),
                 tuple(float(v) for v in rotation(12, -7, 33).ravel()))
    src = tmp_path / f"in{ending}"
    write_image(np.zeros(g.shape, np.float32), g, src)
    img = read_image(src)
    notes = write_like(np.ones(g.shape, np.uint8), img.geometry, tmp_path / f"out{ending}", reference=src)
    back = read_image(tmp_path / f"out{ending}").geometry
    assert notes == [] and back.size == img.geometry.size and back.origin == img.geometry.origin
    if ending in (".mha", ".mhd"):
        assert back == img.geometry
    else:  # NRRD stores direction x spacing; ITK splits it again: a last-bit (1e-16) difference
        np.testing.assert_allclose(back.spacing, img.geometry.spacing, rtol=1e-14)
        np.testing.assert_allclose(back.direction, img.geometry.direction, atol=1e-14)


# ---- messages name the user's file -----------------------------------------------------------------------

TEMP_NAME = re.compile(r"seg3d-\w{8}\.nii|\.part\.")  # names of seg3d's temporary files


def _sheared(folder: Path, name: str, with_qform: bool = True, shape=(14, 12, 9)) -> Path:
    import nibabel as nib

    q = oblique()
    s = q.copy()
    s[0, 1] += 0.15  # x gets 0.15 * y: not a rotation
    img = nib.Nifti1Image(np.random.default_rng(0).normal(100, 20, shape).astype(np.float32), None)
    img.header.set_qform(q, 1 if with_qform else 0)
    img.header.set_sform(s, 1)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(folder / name))
    return folder / name


def test_sheared_sform_warns_naming_the_users_file_and_no_temporary_file_anywhere(tmp_path, capfd):
    import nibabel as nib

    from seg3d.io.checks import check_dataset
    from seg3d.synthetic import make_phantom_dataset

    root = make_phantom_dataset(tmp_path / "ds", num_cases=2, num_test=0, seed=0, shape=(8, 16, 16))
    victim = min((root / "imagesTr").iterdir())
    _sheared(victim.parent, victim.name, shape=nib.load(str(victim)).shape)
    capfd.readouterr()
    found = check_dataset(root, workers=0)
    warnings = [p for p in found if p.warning]
    assert len(warnings) == 1 and warnings[0].path == victim
    assert "not a rotation" in warnings[0].message and "uses the qform" in warnings[0].message
    err = capfd.readouterr()
    everything = err.out + err.err + " ".join(str(p) for p in found)
    assert not TEMP_NAME.search(everything), everything


def test_predict_warns_about_a_sheared_input_naming_it(tmp_path, capfd):
    d = tmp_path / "in"
    p = _sheared(d, "scan.nii.gz")
    capfd.readouterr()
    s, logs = _run(d, tmp_path / "out")
    assert s["predicted"] == 1
    warn = [line for line in logs if line.startswith("warning:")]
    assert len(warn) == 1 and str(p) in warn[0] and "not a rotation" in warn[0] and "qform" in warn[0]
    err = capfd.readouterr()
    assert not TEMP_NAME.search(err.out + err.err)


def test_sheared_sform_without_qform_is_an_error_that_explains_it(tmp_path):
    p = _sheared(tmp_path, "noq.nii.gz", with_qform=False)
    with pytest.raises(Seg3dError) as e:
        read_image(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "not a rotation" in msg and "no qform" in msg


def test_truncated_input_error_names_the_users_file(tmp_path, capfd):
    d = tmp_path / "in"
    write_case(d, "a", GEO)
    f = d / "a_0000.nii.gz"
    f.write_bytes(f.read_bytes()[:-40])
    s, logs = _run(d, tmp_path / "out")
    assert s["failed"][0]["error"].startswith(str(f))
    err = capfd.readouterr()
    assert not TEMP_NAME.search(err.out + err.err + " ".join(logs))


def test_an_input_that_cannot_be_opened_fails_naming_it_and_the_cause(tmp_path, monkeypatch):
    from seg3d.io import niigz

    d = _folder(tmp_path, 2)
    locked = d / "case1_0000.nii.gz"
    real = niigz._is_gzip

    def denied(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(niigz, "_is_gzip", denied)
    s, _ = _run(d, tmp_path / "out")
    assert s["predicted"] == 1 and len(s["failed"]) == 1
    err = s["failed"][0]["error"]
    assert err.startswith(str(locked)) and "Permission denied" in err and s["failed"][0]["kind"] == "input"


def test_a_long_case_name_that_fits_the_file_system_is_written(tmp_path):
    """The temporary name must not be longer than the final one (255 bytes per name on most file systems)."""
    cid = "c" * 240
    write_case(tmp_path / "in", cid, GEO)  # c...c_0000.nii.gz: 252 bytes
    s, _ = _run(tmp_path / "in", tmp_path / "out")
    assert s["predicted"] == 1 and not s["failed"], s["failed"]
    assert read_image(tmp_path / "out" / f"{cid}.nii.gz").geometry == GEO


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha"])
def test_nan_voxels_fail_the_case_naming_the_file_in_every_format(tmp_path, ending):
    """SimpleITK reads a NIfTI's NaN as 0: without a look at the stored voxels the case would be predicted on
    made-up values, while the same image as .mha fails."""
    d = tmp_path / "in"
    arr = np.random.default_rng(0).normal(100, 20, GEO.shape).astype(np.float32)
    arr[1, 2, 3], arr[2, 3, 4] = np.nan, np.inf
    write_image(arr, GEO, d / f"bad{ending}", compress=ending != ".nii")
    write_case(d, "good", GEO)
    s, _ = _run(d, tmp_path / "out")
    assert s["predicted"] == 1 and len(s["failed"]) == 1
    err = s["failed"][0]["error"]
    assert err.startswith(str(d / f"bad{ending}")) and "2 " in err and "NaN" in err
