"""The DICOM series reader against series whose truth we know (built here), pydicom's own files and a real CT."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="the dicom extra (pydicom) is not installed")

from dicom_synth import physical_point, truth_volume, write_multiframe, write_series

from seg3d.errors import Seg3dError
from seg3d.io.dicom import (
    SeriesFilter,
    discover_series,
    modality_mismatch,
    read_series,
    sanitise_case_id,
    series_geometry,
)

SHARED_SERIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "DICOM_TotalSegExampleCT" / "series"
SHARED_TWIN = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "Dataset101_TotalSegExampleCT"
               / "imagesTr" / "totalseg_ct_dicom_0000.nii.gz")


def _only(folder) -> tuple[np.ndarray, object, tuple[str, ...]]:
    inv = discover_series(folder)
    assert len(inv.series) == 1, (inv.series, inv.skipped, inv.problems)
    return read_series(inv.series[0])


def _sitk_series(folder):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_axial_series_shuffled_files_equals_truth_and_simpleitk(tmp_path):
    stored = truth_volume()
    write_series(tmp_path / "s", stored, order=[3, 0, 5, 1, 4, 2])
    arr, geo, _ = _only(tmp_path / "s")
    assert arr.dtype == np.float32 and arr.shape == stored.shape
    np.testing.assert_array_equal(arr, stored.astype(np.float32) - 1024)  # sorted by position, HU applied
    assert geo.spacing == pytest.approx((0.8, 0.7, 2.5)) and geo.origin == pytest.approx((-30, -40, 10))
    img = _sitk_series(tmp_path / "s")  # a clean series: SimpleITK agrees
    from seg3d.io.image import Geometry

    assert not Geometry.from_sitk(img).mismatches(geo, rtol=1e-5, atol_mm=1e-4)


@pytest.mark.parametrize("row,col", [((0.8, 0.6, 0.0), (0.0, 0.0, -1.0)),  # oblique coronal-ish
                                     ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),  # RAS-flipped axial
                                     ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))])  # sagittal
def test_oblique_and_flipped_series_place_every_voxel_at_its_slice_position(tmp_path, row, col):
    stored = truth_volume((5, 8, 9), seed=2)
    write_series(tmp_path / "s", stored, row=row, col=col, origin=(12.0, -7.0, 33.0))
    arr, geo, _ = _only(tmp_path / "s")
    normal = np.cross(row, col)
    for k in range(5):  # the first voxel of slice k is exactly where that slice's header puts it
        np.testing.assert_allclose(physical_point(geo, (0, 0, k)), np.array([12.0, -7.0, 33.0]) + k * 2.5 * normal,
                                   atol=1e-4)
        # one step along x moves along the row cosines by the column spacing
        np.testing.assert_allclose(physical_point(geo, (1, 0, k)) - physical_point(geo, (0, 0, k)),
                                   np.asarray(row) * 0.8, atol=1e-5)
    np.testing.assert_array_equal(arr, stored - 1024.0)
    assert np.linalg.det(np.asarray(geo.direction).reshape(3, 3)) == pytest.approx(1.0)


def test_per_slice_rescale_slope_gives_untruncated_floats(tmp_path):
    stored = truth_volume((4, 6, 6), seed=3)
    slopes = [0.37, 1.91, 0.0123, 2.5]
    write_series(tmp_path / "pet", stored, slopes=slopes, intercepts=[0.5, 0.0, -1.25, 0.0], modality="PT")
    arr, _, _ = _only(tmp_path / "pet")
    truth = stored * np.array(slopes)[:, None, None] + np.array([0.5, 0.0, -1.25, 0.0])[:, None, None]
    np.testing.assert_allclose(arr, truth.astype(np.float32), rtol=1e-6)
    assert not np.allclose(arr, np.round(arr))


def test_gap_is_refused_naming_the_files_and_steps(tmp_path):
    stored = truth_volume((5, 6, 6))
    pos = [(0, 0, 2.5 * k) for k in (0, 1, 2, 4, 5)]  # slice at 7.5 mm missing
    write_series(tmp_path / "gap", stored, positions=pos, names=[f"f{k}" for k in range(5)])
    inv = discover_series(tmp_path / "gap")
    with pytest.raises(Seg3dError, match=r"non-uniform slice spacing.*2\.5 mm.*5 mm.*f2.*f3.*gap"):
        read_series(inv.series[0])


def test_slice_sent_twice_is_read_once_but_two_different_images_at_one_position_are_refused(tmp_path):
    stored = truth_volume((4, 6, 6))
    paths = write_series(tmp_path / "dup", stored, names=[f"f{k}" for k in range(4)])
    shutil.copy(paths[0], tmp_path / "dup" / "f3_copy")  # the same instance sent twice
    arr, _, notes = _only(tmp_path / "dup")
    np.testing.assert_array_equal(arr, stored - 1024.0)
    assert any("sent twice" in n or "read once" in n for n in notes)

    other = stored.copy()
    other[2] += 7
    uid = "1.2.826.0.1.3680043.8.498.1"
    write_series(tmp_path / "two", stored, series_uid=uid, names=[f"a{k}" for k in range(4)])
    write_series(tmp_path / "two", other, series_uid=uid, names=[f"b{k}" for k in range(4)])
    inv = discover_series(tmp_path / "two")
    with pytest.raises(Seg3dError, match="two different images at one position"):
        read_series(inv.series[0])


@pytest.mark.parametrize("kind,match", [
    ("orientation", "mixed orientations"), ("spacing", "mixed pixel spacings"),
    ("kernel", "two or more reconstructions share this series"),
])
def test_mixed_slices_inside_one_series_are_refused(tmp_path, kind, match):
    stored = truth_volume((4, 6, 6))
    kw = {}
    if kind == "orientation":
        kw["orientations"] = [(1, 0, 0, 0, 1, 0)] * 3 + [(1, 0, 0, 0, 0.8, -0.6)]
    elif kind == "spacing":
        kw["pixel_spacings"] = [(0.7, 0.8)] * 3 + [(0.9, 0.9)]
    else:
        kw["kernels"] = ["B30f", "B70f", "B30f", "B70f"]
    write_series(tmp_path / "s", stored, **kw)
    with pytest.raises(Seg3dError, match=match):
        read_series(discover_series(tmp_path / "s").series[0])


def test_gantry_tilt_is_refused_where_simpleitk_silently_reads_a_volume(tmp_path):
    stored = truth_volume((6, 8, 8))
    tilt = np.tan(np.radians(15))
    pos = [(0.0, 2.5 * k * tilt, 2.5 * k) for k in range(6)]  # each slice shifted in y: a sheared grid
    write_series(tmp_path / "tilt", stored, positions=pos)
    with pytest.raises(Seg3dError, match=r"sheared grid \(gantry tilt\).*15\.0\d degrees"):
        read_series(discover_series(tmp_path / "tilt").series[0])
    img = _sitk_series(tmp_path / "tilt")  # what a plain series reader does: no complaint, wrong grid
    assert img.GetSize() == (8, 8, 6)


def test_localizer_inside_a_series_is_left_out_and_a_localizer_series_is_skipped(tmp_path):
    stored = truth_volume((5, 6, 6))
    types = [["ORIGINAL", "PRIMARY", "AXIAL"]] * 4 + [["ORIGINAL", "PRIMARY", "LOCALIZER"]]
    ori = [(1, 0, 0, 0, 1, 0)] * 4 + [(1, 0, 0, 0, 0, -1)]
    pos = [(0, 0, 2.5 * k) for k in range(4)] + [(0, 50, 0)]
    write_series(tmp_path / "ct", stored, image_types=types, orientations=ori, positions=pos)
    write_series(tmp_path / "scout", stored[:2], image_types=[["ORIGINAL", "PRIMARY", "LOCALIZER"]] * 2,
                 orientations=[(1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1)])
    inv = discover_series(tmp_path)
    assert [s.case_id for s in inv.series] == ["ct"]
    assert sum("localizer" in r for _, r in inv.skipped) == 2
    arr, _, notes = read_series(inv.series[0])
    np.testing.assert_array_equal(arr, stored[:4] - 1024.0)
    assert any("localizer" in n for n in notes)


def test_truncated_and_unreadable_files_fail_their_series_only(tmp_path):
    stored = truth_volume((4, 6, 6))
    paths = write_series(tmp_path / "trunc", stored, names=[f"f{k}" for k in range(4)])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 30])  # cut inside the pixel data
    write_series(tmp_path / "broken", stored)
    (tmp_path / "broken" / "bad.dcm").write_bytes(data[:700])  # cut inside the header
    write_series(tmp_path / "garbage", stored)
    (tmp_path / "garbage" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
    write_series(tmp_path / "good", stored)
    inv = discover_series(tmp_path)
    by_id = {s.case_id: s for s in inv.series}
    assert set(by_id) == {"trunc", "broken", "garbage", "good"}
    assert sorted(p.name for p, _ in inv.problems) == ["bad.dcm", paths[1].name, "x.dcm"]
    reasons = {p.name: r for p, r in inv.problems}
    assert "truncated" in reasons[paths[1].name] and "truncated" in reasons["bad.dcm"]
    with pytest.raises(Seg3dError, match=rf"unreadable file\(s\) in its folder.*{paths[1].name}: pixel data has 42 of "
                                         r"its 72 bytes"):
        read_series(by_id["trunc"])
    with pytest.raises(Seg3dError, match=r"unreadable file\(s\) in its folder.*bad\.dcm"):
        read_series(by_id["broken"])
    with pytest.raises(Seg3dError, match=r"unreadable file\(s\) in its folder.*x\.dcm.*no SOP Class UID"):
        read_series(by_id["garbage"])
    arr, _, _ = read_series(by_id["good"])
    np.testing.assert_array_equal(arr, stored - 1024.0)


def test_dicomdir_layout_with_non_dicom_files_beside(tmp_path):
    stored = truth_volume((4, 6, 6))
    write_series(tmp_path / "CD" / "DICOM" / "PAT1" / "SER1", stored)
    (tmp_path / "CD" / "README.TXT").write_text("burned by a PACS")
    (tmp_path / "CD" / "AUTORUN.INF").write_text("[autorun]")
    shutil.copy(_pydicom_dir() / "DICOMDIR", tmp_path / "CD" / "DICOMDIR")
    inv = discover_series(tmp_path / "CD")
    assert [s.case_id for s in inv.series] == ["DICOM_PAT1_SER1"]
    assert {p.name for p, _ in inv.skipped} == {"README.TXT", "AUTORUN.INF", "DICOMDIR"}
    assert not inv.problems


def test_empty_series_uid_groups_by_the_documented_fallback(tmp_path):
    stored = truth_volume((4, 6, 6))
    write_series(tmp_path / "a", stored, series_uid="", series_number=3, names=[f"x{k}" for k in range(4)])
    write_series(tmp_path / "a", stored[:, ::-1].copy(), series_uid="", series_number=4,
                 origin=(0.0, 0.0, 100.0), names=[f"y{k}" for k in range(4)])
    inv = discover_series(tmp_path)
    assert sorted(s.case_id for s in inv.series) == ["a_S3", "a_S4"]
    for s in inv.series:
        assert s.series_uid == "" and "SeriesInstanceUID is empty" in s.notes[0]
        assert read_series(s)[0].shape == (4, 6, 6)


def test_enhanced_multiframe_with_frames_out_of_order(tmp_path):
    stored = truth_volume((5, 7, 6), seed=5)
    write_multiframe(tmp_path / "mf" / "enhanced.dcm", stored, frame_order=[3, 1, 4, 0, 2],
                     row=(0.0, 1.0, 0.0), col=(0.0, 0.0, -1.0))
    arr, geo, _ = _only(tmp_path / "mf")
    np.testing.assert_array_equal(arr, stored - 1024.0)
    np.testing.assert_allclose(physical_point(geo, (0, 0, 4)), np.array([-30.0, -40.0, 10.0]) + 4 * 2.5 *
                               np.cross((0, 1, 0), (0, 0, -1)), atol=1e-6)
    slopes = [0.5, 1.5, 2.25, 0.125, 3.0]
    write_multiframe(tmp_path / "mf2" / "pet.dcm", stored, frame_order=[4, 3, 2, 1, 0], slopes=slopes)
    arr, _, _ = _only(tmp_path / "mf2")
    np.testing.assert_allclose(arr, stored * np.array(slopes)[:, None, None])
    write_multiframe(tmp_path / "mf3" / "nopos.dcm", stored, with_positions=False)
    inv = discover_series(tmp_path / "mf3")
    assert not inv.series and "cannot be placed" in inv.problems[0][1]


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntaxes_decode_with_the_installed_decoders(tmp_path, syntax):
    import pydicom
    import pydicom.uid

    stored = np.abs(truth_volume((3, 64, 64), seed=7))  # openjpeg needs >= 64 pixels for its 6 levels
    paths = write_series(tmp_path / "c", stored)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(p)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    arr, _, _ = _only(tmp_path / "c")
    np.testing.assert_array_equal(arr, stored - 1024.0)


def test_too_few_slices_and_modality_mismatch(tmp_path):
    stored = truth_volume((2, 6, 6))
    write_series(tmp_path / "two", stored)
    with pytest.raises(Seg3dError, match="too few slices: 2 distinct"):
        read_series(discover_series(tmp_path / "two").series[0])
    write_series(tmp_path / "mr", truth_volume((3, 6, 6)), modality="MR")
    s = discover_series(tmp_path / "mr").series[0]
    assert "Modality is MR" in modality_mismatch(s, "CT")
    assert modality_mismatch(s, "T2") is None and modality_mismatch(s, "anything") is None


def test_series_filter_and_case_ids(tmp_path):
    write_series(tmp_path / "study" / "x", truth_volume((6, 6, 6)), modality="CT", description="Abdomen 1.0",
                 series_number=2, names=[f"a{k}" for k in range(6)])
    write_series(tmp_path / "study" / "x", truth_volume((3, 6, 6)), modality="CT", description="Scout-like",
                 series_number=5, origin=(0.0, 0.0, 500.0), names=[f"b{k}" for k in range(3)])
    write_series(tmp_path / "study" / "y z!", truth_volume((4, 6, 6)), modality="PT")
    inv = discover_series(tmp_path)
    assert sorted(s.case_id for s in inv.series) == ["study_x_S2", "study_x_S5", "study_y_z"]
    f = SeriesFilter.parse(["modality=CT", "description=*abdomen*", "min-slices=4"])
    inv = discover_series(tmp_path, f)
    assert [s.case_id for s in inv.series] == ["study_x_S2"]
    assert sum("filtered out" in r for _, r in inv.skipped) == 3 + 4
    assert SeriesFilter.parse(["min-slices=5"]).rejects(discover_series(tmp_path / "study" / "y z!").series[0])
    with pytest.raises(Seg3dError, match="unknown key"):
        SeriesFilter.parse(["size=3"])
    assert sanitise_case_id("../Pat 1/ä*b") == "Pat_1_b" and sanitise_case_id("...") == "series"


# ------------------------------------------------------------------ pydicom's own test series

def _pydicom_dir(*parts) -> Path:
    from pydicom.data import get_testdata_file

    root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    path = root.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"pydicom's test files have no {path}")
    return path


def test_pydicom_clean_5_slice_ct_agrees_with_simpleitk():
    folder = _pydicom_dir("98892001", "CT5N")
    arr, geo, _ = _only(folder)
    img = _sitk_series(folder)
    import SimpleITK as sitk

    from seg3d.io.image import Geometry

    assert arr.shape == (5, 16, 16)
    assert not Geometry.from_sitk(img).mismatches(geo, rtol=1e-4, atol_mm=1e-3)
    np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(img).astype(np.float32))


def test_pydicom_series_with_a_gap_is_refused():
    inv = discover_series(_pydicom_dir("77654033", "CT2"))
    with pytest.raises(Seg3dError, match=r"non-uniform slice spacing: steps are 1\.25 mm.*202\.5 mm.*gap"):
        read_series(inv.series[0])


def test_pydicom_folder_of_mr_series_with_different_orientations():
    inv = discover_series(_pydicom_dir("98892003"))
    assert len(inv.series) == 7 and len({s.case_id for s in inv.series}) == 7
    errors = []
    for s in inv.series:
        with pytest.raises(Seg3dError) as e:
            read_series(s)
        errors.append(str(e.value))
    assert sum("mixed orientations" in e for e in errors) == 3  # the three-plane sets and the radial MR700
    assert sum("too few slices" in e for e in errors) == 4


# ------------------------------------------------------------------ the real JPEG 2000 CT with empty UIDs

def test_real_jpeg2000_series_agrees_with_its_nifti_twin_in_physical_space():
    if not SHARED_SERIES.is_dir() or not SHARED_TWIN.is_file():
        pytest.skip(f"the shared DICOM series ({SHARED_SERIES}) or its NIfTI twin is absent")
    from seg3d.io.image import read_image

    inv = discover_series(SHARED_SERIES.parent)
    assert [p.name for p, _ in inv.skipped] == ["SOURCE.md"] and len(inv.series) == 1
    s = inv.series[0]
    assert s.series_uid == "" and s.instance_count == 20
    arr, geo, _ = read_series(s)
    assert arr.shape == (20, 512, 512) and geo.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    twin = read_image(SHARED_TWIN)
    # every twin voxel centre, mapped to world and back into the series grid, lands on an integer index
    t_dir, s_dir = twin.geometry.direction_matrix, geo.direction_matrix
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in twin.geometry.size], indexing="ij"), -1).reshape(-1, 3)
    world = np.asarray(twin.geometry.origin) + (idx * twin.geometry.spacing) @ t_dir.T
    back = np.linalg.solve(s_dir, (world - np.asarray(geo.origin)).T).T / np.asarray(geo.spacing)
    assert np.abs(back - np.round(back)).max() < 1e-3
    back = np.round(back).astype(int)
    ours = arr[back[:, 2], back[:, 1], back[:, 0]]
    theirs = twin.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))  # same HU at the same physical point
    assert series_geometry(s) == geo
    assert -1024 <= arr.min() and arr.max() > 1000


def test_real_series_case_id_is_its_folder():
    if not SHARED_SERIES.is_dir():
        pytest.skip(f"the shared DICOM series is absent ({SHARED_SERIES})")
    assert discover_series(SHARED_SERIES).series[0].case_id == "series"
    assert os.path.basename(SHARED_SERIES) == "series"


def test_slice_thickness_written_differently_is_one_reconstruction(tmp_path):
    import pydicom

    stored = truth_volume((4, 6, 6))
    paths = write_series(tmp_path / "s", stored)
    for p, text in zip(paths, ("2.5", "2.50", "2.500000", "2.5")):
        ds = pydicom.dcmread(p)
        ds.SliceThickness = text
        ds.save_as(p)
    arr, _, _ = _only(tmp_path / "s")
    np.testing.assert_array_equal(arr, stored - 1024.0)


def test_rt_dose_like_multiframe_without_positions_beside_a_ct_is_skipped_not_an_error(tmp_path):
    import pydicom

    stored = truth_volume((4, 6, 6))
    write_series(tmp_path / "rt", stored)
    ds = pydicom.dcmread(next((tmp_path / "rt").iterdir()))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"  # RT Dose
    ds.Modality, ds.NumberOfFrames, ds.SeriesInstanceUID = "RTDOSE", 2, "1.2.3.4"
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "rt" / "dose.dcm")
    inv = discover_series(tmp_path)
    assert not inv.problems and [s.case_id for s in inv.series] == ["rt"]
    assert any(p.name == "dose.dcm" and "not a volume this reader places" in r for p, r in inv.skipped)
    np.testing.assert_array_equal(read_series(inv.series[0])[0], stored - 1024.0)


def test_position_jitter_below_the_tolerance_is_read_and_a_small_gap_is_not(tmp_path):
    stored = truth_volume((6, 6, 6))
    jitter = [0.0, 0.004, -0.006, 0.005, -0.003, 0.0]  # mm, as DS rounding leaves it: 0.24 % of 2.5 mm
    write_series(tmp_path / "j", stored, positions=[(0, 0, 2.5 * k + e) for k, e in enumerate(jitter)])
    arr, geo, _ = _only(tmp_path / "j")
    np.testing.assert_array_equal(arr, stored - 1024.0)
    assert geo.spacing[2] == pytest.approx(2.5)
    z = [0.0, 2.5, 5.0, 7.5, 10.8, 13.3]  # one step 0.3 mm (12 %) too long: a uniform grid is 0.48 mm off
    write_series(tmp_path / "g", stored, positions=[(0, 0, v) for v in z])
    with pytest.raises(Seg3dError, match=r"the largest 3\.3 mm.*misplace slices by up to 0\.48 mm"):
        read_series(discover_series(tmp_path / "g").series[0])
