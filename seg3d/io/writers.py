"""Mask writers, one per output format, behind one interface: ``writer_for(format).write(mask, geometry,
source, path)``.

Every writer is atomic (temporary file in the same folder, then rename) and keeps the input's grid exactly.

* ``nifti`` (``.nii.gz``, ``.nii``): NIfTI stores orientation twice (qform quaternion and sform matrix) and
  neither survives a decode/re-encode exactly: SimpleITK reading an oblique image and writing its direction
  back moves it by ~1e-11. When the source's first channel is NIfTI, the mask is written with a copy of its
  own header (only the data type and scaling change), so any reader (SimpleITK, nibabel, a viewer) sees
  exactly the input's grid; otherwise it goes through SimpleITK with the Geometry.
* ``nrrd`` (``.nrrd``), ``mha`` (``.mha``): SimpleITK with the input's Geometry.

A new format (e.g. DICOM-SEG) is one class with ``format``, ``ending`` and ``write``, registered in
:data:`WRITERS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from seg3d.atomic import atomic_path
from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry, ending_of, write_image

# nibabel imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

if TYPE_CHECKING:
    from seg3d.io.sources import CaseSource


class MaskWriter(Protocol):
    """Writes a label mask for one case. ``format``: the registry name; ``ending``: the default file ending."""

    format: str
    ending: str

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path) -> None:
        """``mask`` ``(z, y, x)`` (label values, input array order) on ``geometry`` (the input's), written to
        ``path`` atomically; ``source`` is the case it was predicted from (its header or series, when the
        format can carry them over), ``None`` when there is none."""


class NiftiWriter:
    """Header-preserving NIfTI (see the module docstring)."""

    format = "nifti"
    ending = ".nii.gz"

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path) -> None:
        write_like(mask, geometry, path, source.reference if source is not None else None)


class SitkWriter:
    """Any format SimpleITK writes, with the input's Geometry."""

    def __init__(self, format_name: str, ending: str):
        self.format, self.ending = format_name, ending

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path) -> None:
        write_image(mask, geometry, path)


WRITERS: dict[str, MaskWriter] = {
    "nifti": NiftiWriter(),
    "nrrd": SitkWriter("nrrd", ".nrrd"),
    "mha": SitkWriter("mha", ".mha"),
}

# file endings SimpleITK reads -> the writer format keeping that ending
_ENDING_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha",
                   ".mhd": "mha"}


def register_writer(writer: MaskWriter) -> MaskWriter:
    """Add (or replace) a writer under ``writer.format``; returns it."""
    WRITERS[writer.format] = writer
    return writer


def writer_for(format_name: str) -> MaskWriter:
    """The writer registered as ``format_name``. Raises :class:`Seg3dError` naming the known formats."""
    if format_name not in WRITERS:
        raise Seg3dError(f"unknown output format '{format_name}' (choose from {', '.join(WRITERS)})")
    return WRITERS[format_name]


def format_for_path(path: str | Path) -> str:
    """The writer format a path's ending asks for. Raises :class:`Seg3dError` for an unknown ending."""
    e = ending_of(path)
    if e is None:
        raise Seg3dError(f"no mask writer for this file ending (supported: {', '.join(_ENDING_FORMATS)})", path)
    return _ENDING_FORMATS[e]


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path, source: CaseSource | None = None) -> None:
    """Write ``mask`` with the writer its path's ending asks for (``.nii.gz`` -> header-preserving NIfTI)."""
    path = Path(path)
    writer_for(format_for_path(path)).write(mask, geometry, source, path)


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
