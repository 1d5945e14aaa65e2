"""Write a mask with its input's header, byte for byte where the format allows.

NIfTI stores orientation twice (qform quaternion and sform matrix) and neither survives a decode/re-encode
exactly: SimpleITK reading an oblique image and writing its direction back moves it by ~1e-11. For NIfTI
inputs the mask is therefore written with a copy of the input's own header (only the data type and scaling
change), so any reader — SimpleITK, nibabel, a viewer — sees exactly the input's grid. Other formats go
through :func:`seg3d.io.write_image` with the input's Geometry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg3d.atomic import atomic_path
from seg3d.io.image import Geometry, write_image


def write_like(array: np.ndarray, geometry: Geometry, out_path: str | Path, reference: str | Path | None) -> None:
    """Write ``array`` (SimpleITK array order) atomically, with ``reference``'s header when it is NIfTI."""
    out_path = Path(out_path)
    ref = Path(reference) if reference is not None else None
    if ref is not None and ref.name.lower().endswith((".nii", ".nii.gz")) and \
            out_path.name.lower().endswith((".nii", ".nii.gz")):
        try:
            _write_nifti_like(array, geometry, out_path, ref)
            return
        except _Fallback:
            pass
    write_image(array, geometry, out_path)


class _Fallback(Exception):
    pass


def _write_nifti_like(array: np.ndarray, geometry: Geometry, out_path: Path, ref: Path) -> None:
    import nibabel as nib

    try:
        ref_img = nib.load(str(ref))
    except Exception as e:
        raise _Fallback from e
    hdr = ref_img.header.copy()
    data = np.asarray(array).T  # SimpleITK (z, y, x) -> NIfTI (x, y, z): ITK never flips the voxel data
    if tuple(hdr.get_data_shape()[:3]) != data.shape or len(hdr.get_data_shape()) != 3:
        raise _Fallback
    if tuple(int(v) for v in geometry.size) != data.shape:
        raise _Fallback
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    img = nib.Nifti1Image(data, None, header=hdr) if isinstance(hdr, nib.Nifti1Header) else None
    if img is None:
        raise _Fallback
    # keep the reference's qform/sform (and their codes) exactly, not recomputed from an affine
    img.header.set_qform(ref_img.header.get_qform(), int(ref_img.header["qform_code"]))
    img.header.set_sform(ref_img.header.get_sform(), int(ref_img.header["sform_code"]))
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "pixdim",
                "srow_x", "srow_y", "srow_z"):
        img.header[key] = ref_img.header[key]
    with atomic_path(out_path) as tmp:
        nib.save(img, str(tmp))
