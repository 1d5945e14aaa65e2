"""Mask writers, one per output format, behind one interface: ``writer_for(format).write(mask, geometry,
source, path)``.

Every writer is atomic (temporary file in the same folder, then rename) and keeps the input's grid exactly.

* ``nifti`` (``.nii.gz``, ``.nii``): NIfTI stores orientation twice (qform quaternion and sform matrix) and
  neither survives a decode/re-encode exactly: SimpleITK reading an oblique image and writing its direction
  back moves it by ~1e-11, and it cannot carry a sform that differs from the qform at all. When the source's
  first channel is NIfTI, the mask is written with a copy of its own header
  (:func:`seg3d.io.nifti.write_mask_like`: qform, sform, both codes, pixdim with qfac, units, trailing axes of
  length 1; only the data type, scaling and intent change), so any reader (SimpleITK, nibabel, a viewer) sees
  exactly the input's grid; otherwise it goes through SimpleITK with the Geometry.
* ``nrrd`` (``.nrrd``/``.nhdr``), ``mha`` (``.mha``/``.mhd``): SimpleITK with the input's Geometry; detached
  headers are written as a pair, header last; every SimpleITK write is measured before its final name.
* ``dicom-seg`` (``.dcm``): a DICOM-SEG on the source DICOM series (:mod:`seg3d.io.dicom_seg`, highdicom);
  it needs a DICOM source and the :class:`OutputContext` (class names, the model's identity).

``write`` returns what of the source's header could not be kept, one line each (usually nothing), and raises
:class:`~seg3d.errors.Seg3dError` naming the output file and the cause (no space left, read-only, ...).

A new format is one class with ``format``, ``ending`` and ``write``, registered in :data:`WRITERS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry, ending_of, write_image
from seg3d.io.nifti import file_orientation_warnings, is_nifti, write_mask_like

# nibabel imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

if TYPE_CHECKING:
    from seg3d.io.sources import CaseSource


@dataclass(frozen=True)
class OutputContext:
    """What some formats record beside the voxels (DICOM-SEG): the class names and the model's identity."""

    labels: dict[str, int] = field(default_factory=dict)  # dataset.json labels: name -> value
    model_name: str = ""
    model_checksum: str = ""  # ModelFolder.weights_checksum of the folds used
    seg3d_version: str = ""


class MaskWriter(Protocol):
    """Writes a label mask for one case. ``format``: the registry name; ``ending``: the default file ending."""

    format: str
    ending: str

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path,
              context: OutputContext | None = None) -> list[str]:
        """``mask`` ``(z, y, x)`` (label values, input array order) on ``geometry`` (the input's), written to
        ``path`` atomically; ``source`` is the case it was predicted from (its header or series, when the
        format can carry them over), ``None`` when there is none; ``context`` what the model is (formats
        that record it). Returns what of the source's header could not be kept, one line each. Raises
        Seg3dError naming ``path`` when it cannot be written."""


class NiftiWriter:
    """Header-preserving NIfTI (see the module docstring)."""

    format = "nifti"
    ending = ".nii.gz"

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path,
              context: OutputContext | None = None) -> list[str]:
        return write_like(mask, geometry, path, source.reference if source is not None else None)


class SitkWriter:
    """Any format SimpleITK writes, with the input's Geometry."""

    def __init__(self, format_name: str, ending: str):
        self.format, self.ending = format_name, ending

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path,
              context: OutputContext | None = None) -> list[str]:
        write_image(mask, geometry, path)
        return _lost_orientation(source.reference if source is not None else None, geometry, path)


class DicomSegWriter:
    """DICOM-SEG on the source series (a :class:`~seg3d.io.dicom_source.DicomSource`)."""

    format = "dicom-seg"
    ending = ".dcm"

    def write(self, mask: np.ndarray, geometry: Geometry, source: CaseSource | None, path: Path,
              context: OutputContext | None = None) -> list[str]:
        from seg3d.io.dicom_seg import SegAlgorithm, write_dicom_seg

        series = getattr(source, "series", None)
        if series is None:
            where = source.reference if source is not None else path
            raise Seg3dError("a DICOM-SEG needs a DICOM series as input (this case is not one)", where)
        context = context or OutputContext()
        labels = context.labels or {"background": 0, **{f"class_{v}": int(v) for v in np.unique(mask) if v}}
        write_dicom_seg(mask, series, path, labels,
                        SegAlgorithm(context.model_name or "model", context.seg3d_version, context.model_checksum))
        return []


WRITERS: dict[str, MaskWriter] = {
    "nifti": NiftiWriter(),
    "nrrd": SitkWriter("nrrd", ".nrrd"),
    "mha": SitkWriter("mha", ".mha"),
    "dicom-seg": DicomSegWriter(),
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


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path, source: CaseSource | None = None,
               context: OutputContext | None = None) -> list[str]:
    """Write ``mask`` with the writer its path's ending asks for (``.nii.gz`` -> header-preserving NIfTI);
    returns the writer's notes (what of the source's header could not be kept)."""
    path = Path(path)
    return writer_for(format_for_path(path)).write(mask, geometry, source, path, context)


def write_like(array: np.ndarray, geometry: Geometry, out_path: str | Path,
               reference: str | Path | None) -> list[str]:
    """Write ``array`` (SimpleITK array order) atomically, with ``reference``'s header when both are NIfTI.

    Returns what of the reference's header could not be kept, one line each (usually nothing). Raises
    :class:`Seg3dError` naming ``out_path`` when it cannot be written (no space, read-only, ...).
    """
    out_path = Path(out_path)
    if reference is not None and is_nifti(reference) and is_nifti(out_path):
        return write_mask_like(array, out_path, reference)
    write_image(array, geometry, out_path)
    return _lost_orientation(reference, geometry, out_path)


def _lost_orientation(reference, geometry: Geometry, out_path: Path) -> list[str]:
    """A NIfTI source whose qform and sform disagree written to a format with one orientation: say so."""
    if reference is None or not is_nifti(reference) or is_nifti(out_path) or geometry.dim != 3:
        return []
    if not file_orientation_warnings(reference, geometry):
        return []
    return [(f"{ending_of(out_path)} holds one orientation: the mask has the one seg3d read from "
             f"{Path(reference).name}, whose qform and sform disagree (see the warning about it)")]
