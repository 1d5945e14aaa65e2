"""`seg3d convert dicom`: series + DICOM-SEG labels into an nnU-Net dataset that seg3d loads back."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")

from dicom_synth import truth_volume, write_series

from seg3d.errors import Seg3dError
from seg3d.io.dicom import discover_series, read_series
from seg3d.io.dicom_convert import convert_dicom
from seg3d.io.dicom_seg import SegAlgorithm, write_dicom_seg
from seg3d.io.image import read_image
from seg3d.io.layout import load_dataset

ALGO = SegAlgorithm("manual", "0.1.0")


def test_convert_series_and_their_segs_into_an_nnunet_dataset(tmp_path):
    src = tmp_path / "pacs"
    write_series(src / "p1" / "ct", truth_volume((5, 8, 9), seed=1), row=(0.0, 1.0, 0.0), col=(0.0, 0.0, -1.0))
    write_series(src / "p2" / "ct", truth_volume((4, 8, 9), seed=2), slopes=0.5, intercepts=-3.25)
    write_series(src / "p3" / "ct", truth_volume((4, 8, 9), seed=3))  # no label: a test case
    inv = discover_series(src)
    s1, s2 = (next(s for s in inv.series if s.case_id == c) for c in ("p1_ct", "p2_ct"))
    m1 = np.zeros((5, 8, 9), np.uint8)
    m1[1:4, 2:6, 3:7] = 1
    m1[4, 0:2, 0:2] = 2
    write_dicom_seg(m1, s1, src / "p1" / "seg.dcm", {"background": 0, "liver": 1, "tumour": 2}, ALGO)
    m2 = np.zeros((4, 8, 9), np.uint8)
    m2[0:2, 1:3, 1:3] = 1
    write_dicom_seg(m2, s2, src / "p2" / "seg" / "x.dcm", {"background": 0, "tumour": 1}, ALGO)
    (src / "notes.txt").write_text("not DICOM")

    res = convert_dicom(src, tmp_path / "Dataset900_Dicom")
    assert res.training == ["p1_ct", "p2_ct"] and res.test == ["p3_ct"] and not res.failed
    assert res.labels == {"background": 0, "liver": 1, "tumour": 2}
    ds = load_dataset(tmp_path / "Dataset900_Dicom")
    assert not ds.problems and ds.channel_names == ("CT",) and len(ds.cases) == 2
    meta = json.loads((tmp_path / "Dataset900_Dicom" / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    for series, mask, want in ((s1, m1, m1), (s2, m2, np.where(m2 == 1, 2, 0))):
        arr, geo, _ = read_series(series)
        img = read_image(tmp_path / "Dataset900_Dicom" / "imagesTr" / f"{series.case_id}_0000.nii.gz")
        lab = read_image(tmp_path / "Dataset900_Dicom" / "labelsTr" / f"{series.case_id}.nii.gz")
        assert not img.geometry.mismatches(geo, rtol=1e-6, atol_mm=1e-5) and lab.geometry == img.geometry
        np.testing.assert_array_equal(img.array, arr)  # same reader, same voxels
        np.testing.assert_array_equal(lab.array, want)
    assert read_image(tmp_path / "Dataset900_Dicom" / "imagesTr" / "p2_ct_0000.nii.gz").array.dtype == np.float32
    assert read_image(tmp_path / "Dataset900_Dicom" / "imagesTr" / "p1_ct_0000.nii.gz").array.dtype == np.int16
    assert (tmp_path / "Dataset900_Dicom" / "imagesTs" / "p3_ct_0000.nii.gz").is_file()
    with pytest.raises(Seg3dError, match="not empty"):
        convert_dicom(src, tmp_path / "Dataset900_Dicom")


def test_convert_cli_reports_problems_and_exits_1(tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    src = tmp_path / "in"
    write_series(src / "ok", truth_volume((4, 6, 6)))
    write_series(src / "gap", truth_volume((4, 6, 6)), positions=[(0, 0, z) for z in (0, 2.5, 5, 10)])
    res = CliRunner().invoke(app, ["convert", "dicom", str(src), "-o", str(tmp_path / "Dataset901_X"),
                                   "--series-filter", "modality=CT"])
    assert res.exit_code == 1, res.output
    assert "1 unlabelled in imagesTs" in res.output and "non-uniform slice spacing" in res.output
    assert (tmp_path / "Dataset901_X" / "imagesTs" / "ok_0000.nii.gz").is_file()
    res = CliRunner().invoke(app, ["convert", "dicom", str(src), "-o", str(tmp_path / "Y"),
                                   "--series-filter", "colour=red"])
    assert res.exit_code == 1 and "unknown key 'colour'" in res.output
