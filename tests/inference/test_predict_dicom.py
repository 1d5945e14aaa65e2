"""`seg3d predict` on a folder tree of DICOM series beside image files, as a new user would try it:
outputs (NIfTI + DICOM-SEG), notes, failures naming the series, statistics, previews and provenance."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")

from dicom_synth import truth_volume, write_series
from inference_helpers import write_case

from seg3d.io.dicom import discover_series, read_series
from seg3d.io.dicom_seg import read_dicom_seg
from seg3d.io.image import Geometry, read_image
from seg3d.io.writers import OutputContext
from seg3d.runners.local import predict_folder

LABELS = {"background": 0, "bright": 1}


class BrightPredictor:
    """Labels = voxels brighter than the image mean (a stand-in with the Predictor interface)."""

    label_values = (0, 1)

    def __init__(self):
        self.plan = SimpleNamespace(num_channels=1, channel_names=("CT",))

    def preprocess(self, data, geometry, where=None):
        return data, SimpleNamespace(geometry=geometry)

    def predict_preprocessed(self, pdata):
        return pdata[0] > pdata[0].mean()

    def export(self, probs, props, probabilities=False):
        return probs.astype(np.uint8), None

    def output_context(self):
        return OutputContext(LABELS, "Dataset999_Bright 3d_fullres", "c0ffee" * 8, "0.1.0")

    def describe(self):
        return {"model": "bright", "model_checksum": "c0ffee" * 8}


def _study(root: Path) -> Path:
    write_series(root / "patA" / "ct", truth_volume((6, 12, 10), seed=1), row=(0.8, 0.6, 0.0), col=(0.0, 0.0, -1.0))
    write_series(root / "patB" / "anon", truth_volume((5, 12, 10), seed=2), series_uid="")
    write_series(root / "patC" / "mr", truth_volume((5, 12, 10), seed=3), modality="MR")
    write_series(root / "patD" / "gappy", truth_volume((4, 12, 10), seed=4),
                 positions=[(0, 0, z) for z in (0.0, 2.5, 5.0, 12.5)])
    write_case(root, "niftycase", Geometry((10, 12, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                                           (1, 0, 0, 0, 1, 0, 0, 0, 1)), seed=5)
    (root / "README.txt").write_text("exported from PACS")
    return root


def test_predict_a_dicom_study_with_statistics_preview_and_provenance(tmp_path):
    import SimpleITK as sitk

    src = _study(tmp_path / "in")
    out = tmp_path / "out"
    s = predict_folder(src, out, None, predictor=BrightPredictor(), statistics=True, preview=True)
    # 5 cases: 3 predicted, the MR series refused while listing, the gappy series refused when read
    assert s["predicted"] == 3 and s["total"] == 5 and len(s["failed"]) == 2
    errors = {f["case"]: f["error"] for f in s["failed"]}
    assert set(errors) == {"patC_mr", "patD_gappy"}
    assert "Modality is MR" in errors["patC_mr"] and "'patC_mr'" in errors["patC_mr"]
    assert "non-uniform slice spacing" in errors["patD_gappy"] and "'patD_gappy'" in errors["patD_gappy"]
    assert len(s["notes"]) == 1 and "patB_anon" in s["notes"][0] and "NIfTI written" in s["notes"][0]

    # DICOM input: NIfTI + DICOM-SEG by default; the series without UIDs: NIfTI only; the NIfTI case: NIfTI only
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "niftycase.nii.gz", "patA_ct.dcm", "patA_ct.nii.gz", "patB_anon.nii.gz", "predict_manifest.json",
        "statistics.csv"]
    series = {x.case_id: x for x in discover_series(src).series}
    # the NIfTI carries the series' true geometry: SimpleITK's own reading of this clean oblique series agrees
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(src / "patA" / "ct")))
    ref = reader.Execute()
    nifti = read_image(out / "patA_ct.nii.gz")
    assert not nifti.geometry.mismatches(Geometry.from_sitk(ref), rtol=1e-5, atol_mm=1e-4)
    np.testing.assert_array_equal(nifti.array, (sitk.GetArrayFromImage(ref) > sitk.GetArrayFromImage(ref).mean()))
    # the DICOM-SEG read back with highdicom gives the NIfTI's voxels on the series' grid
    numbers, names = read_dicom_seg(out / "patA_ct.dcm", series["patA_ct"])
    assert names == {1: "bright"}
    np.testing.assert_array_equal(numbers, nifti.array)

    # statistics: per case JSON and a cohort table; recomputed here from the written files
    doc = json.loads((out / "statistics" / "patA_ct.json").read_text())
    assert doc["coordinates"] == "LPS"
    image, _, _ = read_series(series["patA_ct"])
    inside = image[nifti.array == 1]
    rec = doc["structures"][0]
    assert rec["voxel_count"] == inside.size and rec["mean"] == pytest.approx(float(inside.mean()), rel=1e-6)
    assert rec["volume_ml"] == pytest.approx(inside.size * np.prod(nifti.geometry.spacing) / 1000)
    with open(out / "statistics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == ["niftycase", "patA_ct", "patB_anon"]
    assert all((out / "previews" / f"{c}.png").is_file() for c in ("niftycase", "patA_ct", "patB_anon"))

    # provenance
    m = json.loads((out / "predict_manifest.json").read_text())
    cases = {c["case"]: c for c in m["cases"]}
    a = cases["patA_ct"]
    assert a["input"]["series_instance_uid"] == series["patA_ct"].series_uid and a["input"]["instances"] == 6
    assert a["input"]["study_instance_uid"] and len(a["input"]["files_sha256"]) == 64
    assert a["model_checksum"] == "c0ffee" * 8
    assert {(Path(o["path"]).name, o["format"]) for o in a["outputs"]} >= {("patA_ct.nii.gz", "nifti"),
                                                                          ("patA_ct.dcm", "dicom-seg")}
    assert cases["patB_anon"]["input"]["series_instance_uid"] == "" and cases["patB_anon"]["notes"]
    assert len(cases["niftycase"]["input"]["files"][0]["sha256"]) == 64
    skipped = [i for i in m["inputs"] if i["status"] == "skipped"]
    assert {Path(i["file"]).name for i in skipped} == {"README.txt"}
    # every file of the tree accounted for: the series' files are inputs of their cases
    n_files = sum(1 for p in src.rglob("*") if p.is_file())
    assert m["input_counts"]["files"] == n_files == len(m["inputs"])

    # --continue: everything complete is skipped, the refused series are reported again
    s2 = predict_folder(src, out, None, predictor=BrightPredictor(), statistics=True, preview=True, continue_=True)
    assert s2["predicted"] == 0 and s2["skipped"] == 3 and len(s2["failed"]) == 2


def test_output_format_choices_and_series_filter(tmp_path):
    src = _study(tmp_path / "in")
    s = predict_folder(src, tmp_path / "o1", None, predictor=BrightPredictor(), output_formats=("dicom-seg",),
                       series_filter=("modality=CT", "min-slices=5"))
    errors = {f["case"]: f["error"] for f in s["failed"]}
    assert "its input is not a DICOM series" in errors["niftycase"]  # only dicom-seg asked: nothing to write
    assert "patD_gappy" not in errors and "patC_mr" not in errors  # filtered out (4 slices; MR), not failed
    names = sorted(p.name for p in (tmp_path / "o1").iterdir() if p.is_file())
    assert names == ["patA_ct.dcm", "patB_anon.nii.gz", "predict_manifest.json"]  # no UIDs: NIfTI instead
    s = predict_folder(src, tmp_path / "o2", None, predictor=BrightPredictor(), output_formats=("nrrd", "mha"),
                       series_filter=("description=nothing*",))
    assert s["predicted"] == 1 and sorted(p.name for p in (tmp_path / "o2").glob("niftycase.*")) == [
        "niftycase.mha", "niftycase.nrrd"]


@pytest.mark.slow
def test_cli_predict_dicom_with_a_trained_model_records_its_checksum(tmp_path, tiny_model_dir):
    import highdicom as hd
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    from seg3d.core.model_folder import ModelFolder

    src = tmp_path / "in"
    write_series(src / "s1", truth_volume((6, 40, 36), seed=1), modality="MR")  # the tiny plan's channel is MRI
    write_series(src / "s2", truth_volume((4, 8, 8), seed=2), modality="MR",
                 positions=[(0, 0, z) for z in (0.0, 2.5, 5.0, 10.0)])
    (src / "s1" / "broken").mkdir()
    (src / "s1" / "broken" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    res = CliRunner().invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "-m", str(tiny_model_dir),
                                   "--device", "cpu", "--no-tta", "--statistics", "--preview"])
    assert res.exit_code == 1, res.output  # a series refused and a broken file: reported, the rest predicted
    assert "predicted 1" in res.output and "non-uniform slice spacing" in res.output and "x.dcm" in res.output
    m = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())
    folder = ModelFolder(tiny_model_dir)
    want = folder.weights_checksum(m["folds"], "final")
    assert m["model_checksum"] == want and m["cases"][0]["model_checksum"] == want
    seg = hd.seg.segread(tmp_path / "out" / "s1.dcm")
    ident = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert want in ident.AlgorithmParameters and ident.AlgorithmName.startswith("seg3d ")
    assert [x.SegmentLabel for x in seg.SegmentSequence] == ["core", "rim", "satellite"]
    assert (tmp_path / "out" / "statistics.csv").is_file() and (tmp_path / "out" / "previews" / "s1.png").is_file()


def test_real_series_without_uids_gets_a_nifti_on_simpleitks_grid_and_a_one_line_note(tmp_path):
    import SimpleITK as sitk

    folder = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "DICOM_TotalSegExampleCT"
    if not (folder / "series").is_dir():
        pytest.skip(f"the shared DICOM series is absent ({folder})")
    # the series folder itself (its parent also holds a NIfTI, which would be a second case)
    s = predict_folder(folder / "series", tmp_path / "out", None, predictor=BrightPredictor(), statistics=True)
    assert s["predicted"] == 1 and not s["failed"]
    assert len(s["notes"]) == 1 and "\n" not in s["notes"][0] and "SeriesInstanceUID" in s["notes"][0]
    assert not (tmp_path / "out" / "series.dcm").exists()
    nifti = read_image(tmp_path / "out" / "series.nii.gz")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "series")))
    ref = reader.Execute()
    assert not nifti.geometry.mismatches(Geometry.from_sitk(ref), rtol=1e-6, atol_mm=1e-4)
    hu = sitk.GetArrayFromImage(ref).astype(np.float32)
    np.testing.assert_array_equal(nifti.array, hu > hu.mean())
    m = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())
    assert m["cases"][0]["input"]["instances"] == 20 and m["cases"][0]["input"]["study_instance_uid"] == ""
