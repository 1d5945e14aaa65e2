"""Every NIfTI header variant survives the mask writer exactly, for SimpleITK and nibabel alike (issue 11, kind 1),
and the header's qform/sform disagreements are said naming the user's file (kind 4)."""
from __future__ import annotations

import numpy as np
import pytest
from nifti_variants import VARIANTS, variant

from seg3d.io.image import read_image
from seg3d.io.nifti import file_orientation_warnings
from seg3d.io.writers import write_like

FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
          "srow_x", "srow_y", "srow_z", "xyzt_units")


def _mask_of(img) -> np.ndarray:
    return (img.array > np.median(img.array)).astype(np.uint8) + (img.array > 110).astype(np.uint8)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("name", VARIANTS)
def test_mask_keeps_the_input_header_for_every_reader(tmp_path, name, ending):
    import nibabel as nib

    src = variant(name, tmp_path / "in", ".nii.gz" if ending == ".nii" else ".nii")  # also crosses endings
    img = read_image(src)
    mask = _mask_of(img)
    out = tmp_path / "out" / f"{name}{ending}"
    notes = write_like(mask, img.geometry, out, reference=src)

    # SimpleITK (seg3d, evaluate, ITK tools): same grid to the last bit, same voxels
    back = read_image(out)
    assert back.geometry == img.geometry
    np.testing.assert_array_equal(back.array, mask)
    # nibabel (sform-first tools): both affines, both codes, pixdim (with qfac), units, dims
    a, b = nib.load(str(src)).header, nib.load(str(out)).header
    assert isinstance(b, nib.Nifti1Header) and not isinstance(b, nib.Nifti2Header)
    if name == "nifti2":
        for k in FIELDS:
            np.testing.assert_allclose(np.asarray(b[k], float), np.asarray(a[k], float), rtol=1e-6, atol=1e-5)
        assert len(notes) == 1 and "NIfTI-2" in notes[0]
    else:
        for k in FIELDS:
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)
        assert np.array_equal(a.get_qform(), b.get_qform()) and np.array_equal(a.get_sform(), b.get_sform())
        assert len(notes) == (name == "intent_extension")
    np.testing.assert_allclose(b["pixdim"], a["pixdim"], rtol=1e-7 if name == "nifti2" else 0)
    np.testing.assert_array_equal(b["dim"], a["dim"])  # x, y, z and any trailing axes of length 1
    data = np.asanyarray(nib.load(str(out)).dataobj)
    assert data.dtype == np.uint8 and b.get_slope_inter() in ((1.0, 0.0), (None, None))
    np.testing.assert_array_equal(data.reshape(data.shape[:3]).T, mask)
    if name == "intent_extension":
        assert int(b["intent_code"]) == 0 and b.extensions[0].get_content() == b"scanner note"


EXPECTED_WARNING = {
    "q1_s2_apart": ("8.00 mm apart", "seg3d uses the qform"),
    "4d_singleton": ("8.00 mm apart", "seg3d uses the qform"),
    "5d_singletons": ("8.00 mm apart", "seg3d uses the sform"),
    "big_endian": ("8.00 mm apart", "seg3d uses the sform"),
    "nifti2": ("8.00 mm apart", "seg3d uses the qform"),
    "codes_0": ("neither a qform nor a sform",),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_orientation_warnings_say_which_transform_seg3d_uses(tmp_path, name):
    src = variant(name, tmp_path)
    geometry = read_image(src).geometry
    warnings = file_orientation_warnings(src, geometry)
    expected = EXPECTED_WARNING.get(name)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and all(e in warnings[0] for e in expected), warnings


def test_the_geometry_seg3d_reads_is_the_transform_the_warning_names(tmp_path):
    """'uses the qform' is what SimpleITK really did: its origin is the qform's, 8 mm from the sform's."""
    import nibabel as nib

    src = variant("q1_s2_apart", tmp_path)
    g = read_image(src).geometry
    q = nib.load(str(src)).header.get_qform()
    np.testing.assert_allclose(g.origin, q[:3, 3] * [-1, -1, 1], atol=1e-4)


def test_fold_validation_masks_keep_the_input_header(tmp_path, tiny_plan):
    """The trainer's end-of-fold predictions go through the same writer (issue 11: not only predict)."""
    import json

    import nibabel as nib
    from inference_helpers import make_model_dir

    from seg3d.training.validation import validate_fold

    root = tmp_path / "ds"
    (root / "labelsTr").mkdir(parents=True)
    src = variant("4d_singleton", root / "imagesTr")
    src = src.rename(root / "imagesTr" / "c0_0000.nii.gz")
    ref = nib.load(str(src))
    lab = nib.Nifti1Image((np.asanyarray(ref.dataobj) > 100).astype(np.uint8)[..., 0], None, header=ref.header.copy())
    lab.header.set_data_shape(lab.shape)
    nib.save(lab, str(root / "labelsTr" / "c0.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz",
                                                   "labels": tiny_plan.labels, "numTraining": 1}))
    model = make_model_dir(tmp_path / "model", tiny_plan, folds=(0,))
    validate_fold(model, 0, ["c0"], root, device="cpu", tta=False, log=lambda s: None)
    out = nib.load(str(model / "fold_0" / "validation" / "c0.nii.gz"))
    a, b = ref.header, out.header
    for k in FIELDS + ("pixdim", "dim"):
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    assert read_image(model / "fold_0" / "validation" / "c0.nii.gz").geometry == read_image(src).geometry


@pytest.mark.parametrize("name", ["q1_s2_apart", "4d_singleton", "qfac_minus1", "nifti2"])
def test_every_writer_of_a_batch_keeps_the_input_geometry(tmp_path, name):
    """predict with every registered output format (and probabilities): each mask on the input's grid; the
    formats that hold one orientation say so when the input's qform and sform disagree."""
    import nibabel as nib
    from test_batch import ThresholdPredictor

    from seg3d.io.writers import WRITERS
    from seg3d.runners.local import predict_folder

    src = variant(name, tmp_path / "in")
    logs: list[str] = []
    # every image format (a DICOM-SEG needs a DICOM series as input: tests/io/test_dicom_seg.py)
    image_writers = {f: w for f, w in WRITERS.items() if f != "dicom-seg"}
    s = predict_folder(tmp_path / "in", tmp_path / "out", None, predictor=ThresholdPredictor(),
                       output_formats=tuple(image_writers), save_probabilities=True, log=logs.append)
    assert s["predicted"] == 1 and not s["failed"]
    geometry = read_image(src).geometry
    for fmt, writer in image_writers.items():
        out = tmp_path / "out" / f"{name}{writer.ending}"
        assert read_image(out).geometry.size == geometry.size
        np.testing.assert_allclose(read_image(out).geometry.origin, geometry.origin, atol=1e-9)
        np.testing.assert_allclose(read_image(out).geometry.direction, geometry.direction, atol=1e-12)
        if fmt == "nifti":
            a, b = nib.load(str(src)).header, nib.load(str(out)).header
            np.testing.assert_allclose(b.get_sform(), a.get_sform(), atol=1e-5)
            np.testing.assert_allclose(b.get_qform(), a.get_qform(), atol=1e-5)
            assert (int(b["qform_code"]), int(b["sform_code"])) == (int(a["qform_code"]), int(a["sform_code"]))
    disagree = name != "qfac_minus1"
    notes = [line for line in logs if line.startswith("note:") and "one orientation" in line]
    assert len(notes) == (2 if disagree else 0), logs
    with np.load(tmp_path / "out" / f"{name}.npz") as z:
        assert z["probabilities"].shape[1:] == geometry.shape
