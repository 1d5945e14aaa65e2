"""Write a mask with its input's header, byte for byte where the format allows.

NIfTI stores orientation twice (qform quaternion and sform matrix) and neither survives a decode/re-encode
exactly: SimpleITK reading an oblique image and writing its direction back moves it by ~1e-11, and it cannot
carry a sform that differs from the qform at all. For NIfTI inputs the mask is therefore written with a copy
of the input's own header (:func:`seg3d.io.nifti.write_mask_like`: only the data type, scaling and intent
change), so any reader — SimpleITK, nibabel, a viewer — sees exactly the input's grid. Other formats go
through :func:`seg3d.io.write_image` with the input's Geometry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg3d.io.image import Geometry, write_image
from seg3d.io.nifti import is_nifti, write_mask_like


def write_like(array: np.ndarray, geometry: Geometry, out_path: str | Path,
               reference: str | Path | None) -> list[str]:
    """Write ``array`` (SimpleITK array order) atomically, with ``reference``'s header when both are NIfTI.

    Returns what of the reference's header could not be kept, one line each (usually nothing). Raises
    :class:`seg3d.errors.Seg3dError` naming ``out_path`` when it cannot be written (no space, read-only, ...).
    """
    out_path = Path(out_path)
    if reference is not None and is_nifti(reference) and is_nifti(out_path):
        return write_mask_like(array, out_path, reference)
    write_image(array, geometry, out_path)
    if reference is not None and is_nifti(reference):
        return [(f"{out_path.suffix} keeps one orientation: the mask has the geometry seg3d read from "
                 f"{Path(reference).name}, not its qform/sform pair")]
    return []
