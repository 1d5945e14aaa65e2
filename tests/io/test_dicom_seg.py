"""DICOM-SEG out: highdicom reads back the voxels of the NIfTI written beside it, on the series' grid."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")

from dicom_synth import truth_volume, write_multiframe, write_series

from seg3d.errors import Seg3dError
from seg3d.io.dicom import discover_series, read_series
from seg3d.io.dicom_seg import SegAlgorithm, read_dicom_seg, reference_problem, write_dicom_seg
from seg3d.io.image import read_image, write_image

LABELS = {"background": 0, "liver": 2, "spleen": 5, "never predicted": 7}
ALGO = SegAlgorithm("Dataset123_Phantom 3d_fullres", "0.1.0", "ab" * 32)


def _mask(shape) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[1:3, 2:5, 3:7] = 2
    m[-2, 5:8, 1:4] = 5
    return m


def test_seg_read_back_with_highdicom_equals_the_nifti_on_the_series_grid(tmp_path):
    import highdicom as hd

    write_series(tmp_path / "s", truth_volume((6, 10, 12)), row=(0.8, 0.6, 0.0), col=(0.0, 0.0, -1.0))
    series = discover_series(tmp_path / "s").series[0]
    _, geo, _ = read_series(series)
    mask = _mask(geo.shape)
    write_image(mask, geo, tmp_path / "case.nii.gz")
    write_dicom_seg(mask, series, tmp_path / "case.dcm", LABELS, ALGO)
    nifti = read_image(tmp_path / "case.nii.gz")
    numbers, names = read_dicom_seg(tmp_path / "case.dcm", series)
    values = np.array([0, 2, 5, 7])
    np.testing.assert_array_equal(values[numbers], nifti.array)
    assert names == {1: "liver", 2: "spleen", 3: "never predicted"}  # one segment per class, absent ones too

    seg = hd.seg.segread(tmp_path / "case.dcm")
    # references every source instance and the frame of reference
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {f.sop_instance_uid for f in series.frames} and len(refs) == 6
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "seg3d Dataset123_Phantom 3d_fullres" and algo.AlgorithmVersion == "0.1.0"
    assert "ab" * 32 in algo.AlgorithmParameters
    # highdicom's own volume (its own geometry) holds the NIfTI's value at every physical point it covers
    vol = seg.get_volume(combine_segments=True, relabel=False)
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in vol.array.shape], indexing="ij"), -1).reshape(-1, 3)
    world = (vol.affine @ np.c_[kji, np.ones(len(kji))].T).T[:, :3]
    d = np.asarray(nifti.geometry.direction).reshape(3, 3)
    xyz = np.linalg.solve(d, (world - np.asarray(nifti.geometry.origin)).T).T / np.asarray(nifti.geometry.spacing)
    assert np.abs(xyz - np.round(xyz)).max() < 1e-4
    xyz = np.round(xyz).astype(int)
    assert xyz.min() >= 0 and (xyz < np.asarray(nifti.geometry.size)).all()
    np.testing.assert_array_equal(values[np.asarray(vol.array).ravel()], nifti.array[xyz[:, 2], xyz[:, 1], xyz[:, 0]])


def test_seg_of_an_enhanced_multiframe_file_with_frames_out_of_order(tmp_path):
    write_multiframe(tmp_path / "mf" / "a.dcm", truth_volume((5, 7, 6)), frame_order=[3, 1, 4, 0, 2])
    series = discover_series(tmp_path / "mf").series[0]
    _, geo, _ = read_series(series)
    mask = _mask(geo.shape)
    write_dicom_seg(mask, series, tmp_path / "a_seg.dcm", LABELS, ALGO)
    numbers, _ = read_dicom_seg(tmp_path / "a_seg.dcm", series)
    np.testing.assert_array_equal(np.array([0, 2, 5, 7])[numbers], mask)


def test_series_without_uids_is_named_in_one_line_and_bad_masks_are_refused(tmp_path):
    write_series(tmp_path / "nouid", truth_volume((4, 6, 6)), series_uid="")
    series = discover_series(tmp_path / "nouid").series[0]
    why = reference_problem(series)
    assert "\n" not in why and "SeriesInstanceUID" in why and "NIfTI written" in why
    with pytest.raises(Seg3dError, match="could not reference it"):
        write_dicom_seg(np.zeros((4, 6, 6), np.uint8), series, tmp_path / "x.dcm", LABELS, ALGO)
    assert not (tmp_path / "x.dcm").exists()

    write_series(tmp_path / "ok", truth_volume((4, 6, 6)))
    ok = discover_series(tmp_path / "ok").series[0]
    with pytest.raises(Seg3dError, match=r"value\(s\) \[3\] that are not labels"):
        write_dicom_seg(np.full((4, 6, 6), 3, np.uint8), ok, tmp_path / "y.dcm", LABELS, ALGO)
    with pytest.raises(Seg3dError, match="mask shape"):
        write_dicom_seg(np.zeros((3, 6, 6), np.uint8), ok, tmp_path / "y.dcm", LABELS, ALGO)
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".*part*"))
