"""NIfTI headers: keep them exactly on write, say where readers disagree about them.

NIfTI places an image twice, by the *qform* (a rotation, stored as a quaternion) and the *sform* (any affine),
each with a code saying what it means. Readers do not agree which to trust: nibabel, FSL and most viewers use the
sform when its code is set; ITK (so SimpleITK and seg3d) uses the sform only when its code is 1 (scanner) or
there is no qform, and never a sform that is not a rotation times the voxel spacing (a shear). Two rules follow:

* :func:`write_mask_like` writes a mask with a copy of the input's own header (qform, sform, both codes,
  pixdim with qfac, units, extra singleton axes, extensions); only the data type, scaling and intent change.
  So every reader, whichever rule it follows, puts the mask exactly on its image. NIfTI-2 inputs get a NIfTI-1
  mask (SimpleITK cannot read NIfTI-2) with the same fields, said in one line.
* :func:`orientation_warnings` says, naming the user's file, when the qform and sform place the image
  differently, which one seg3d uses, and why (sheared sform, sform code other than 1, no orientation at all).

Arrays here are in SimpleITK order ``(z, y, x)``; NIfTI stores ``(x, y, z, ...)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg3d.atomic import atomic_path, storage_error
from seg3d.errors import Seg3dError

NIFTI_ENDINGS = (".nii", ".nii.gz")
_XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TOL_MM = 1e-3  # header values are float32: ~1e-5 mm at 100 mm from the origin


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_ENDINGS)


def _nib():
    import nibabel as nib

    return nib


def load_header(path: str | Path):
    """The nibabel header of a NIfTI-1 or NIfTI-2 file (reads only the header). Raises :class:`Seg3dError`."""
    nib = _nib()
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a damaged file
        raise Seg3dError(f"cannot read the NIfTI header ({e})", path) from None
    if not isinstance(img.header, nib.Nifti1Header):  # Nifti2Header is a subclass
        raise Seg3dError("not a NIfTI-1 or NIfTI-2 file", path)
    return img.header


def as_nifti1_header(hdr):
    """A NIfTI-1 copy of a NIfTI-2 header (same qform, sform, codes, pixdim, units; float32 precision)."""
    nib = _nib()
    if not isinstance(hdr, nib.Nifti2Header):
        return hdr.copy()
    if max(hdr.get_data_shape() or (0,)) > 32767:
        raise ValueError(f"dimensions {hdr.get_data_shape()} do not fit NIfTI-1 (at most 32767 per axis)")
    out = nib.Nifti1Header.from_header(hdr, check=False)
    out["sizeof_hdr"] = 348
    out["magic"] = b"n+1"
    return out


# ---- writing ---------------------------------------------------------------------------------------------

def write_mask_like(array: np.ndarray, out_path: str | Path, reference: str | Path) -> list[str]:
    """Write ``array`` (z, y, x) atomically to ``out_path`` (.nii or .nii.gz) with ``reference``'s header.

    The reference's grid must be the array's: its first three dimensions are ``array.shape`` reversed. Extra
    axes of length 1 (``x, y, z, 1``) are kept; a longer 4th axis (a multi-channel input) is dropped, since a
    mask has one value per voxel. Returns the header fields that could not be kept, one line each (usually
    none). Raises :class:`Seg3dError` naming the reference when its header cannot be used.
    """
    nib = _nib()
    out_path, reference = Path(out_path), Path(reference)
    ref = load_header(reference)
    notes: list[str] = []
    if isinstance(ref, nib.Nifti2Header):
        try:
            hdr = as_nifti1_header(ref)
        except ValueError as e:
            raise Seg3dError(f"the mask cannot be written as NIfTI-1: {e}", reference) from None
        notes.append(f"{reference.name} is NIfTI-2: the mask is NIfTI-1 (SimpleITK cannot read NIfTI-2), "
                     "same qform, sform, codes and pixdim in single precision")
    else:
        hdr = ref.copy()
    data = np.asarray(array).T  # SimpleITK (z, y, x) -> NIfTI (x, y, z): ITK never reorders voxels
    shape = tuple(int(v) for v in hdr.get_data_shape())
    if tuple(shape[:3]) != data.shape:
        raise Seg3dError(f"the mask's grid {data.shape} is not the image's {shape[:3]} (x, y, z)", reference)
    extra = shape[3:]
    if all(n == 1 for n in extra):
        data = data.reshape(shape)
    else:
        hdr.set_data_shape(data.shape)
        notes.append(f"{reference.name} has a 4th axis of {extra[0]} values: the mask is 3D "
                     "(same spatial header)")
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    if int(hdr["intent_code"]) != 0:
        notes.append(f"{reference.name} has NIfTI intent code {int(hdr['intent_code'])}: the mask has none "
                     "(it holds labels)")
    hdr.set_intent(0, (), name="")
    img = nib.Nifti1Image(data, None, header=hdr)
    _copy_orientation(ref, img.header)
    try:
        with atomic_path(out_path) as tmp:
            nib.save(img, str(tmp))
    except OSError as e:
        raise storage_error(out_path, e) from None
    return notes


def _copy_orientation(src, dst) -> None:
    """qform/sform fields and pixdim copied verbatim (re-deriving them from an affine loses precision)."""
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                "qoffset_z", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        dst[key] = src[key]


# ---- what the header means -------------------------------------------------------------------------------

def _corner_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between where two voxel-to-world affines put the grid's corners."""
    n = [max(int(s) - 1, 0) for s in shape[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])]).T
    return float(np.abs((a - b) @ corners)[:3].max())


def _is_rotation_times_spacing(m: np.ndarray) -> bool:
    cols = np.linalg.norm(m, axis=0)
    if np.any(cols <= 0):
        return False
    r = m / cols
    return bool(np.allclose(r.T @ r, np.eye(3), atol=1e-4))


def _shear_degrees(m: np.ndarray) -> str:
    """The angles between the sform's voxel axes that are not 90 degrees, e.g. 'x-y 81.5 deg'."""
    r = m / np.linalg.norm(m, axis=0)
    out = []
    for (i, j), name in zip(((0, 1), (0, 2), (1, 2)), ("i-j", "i-k", "j-k")):
        ang = float(np.degrees(np.arccos(np.clip(r[:, i] @ r[:, j], -1, 1))))
        if abs(ang - 90) > 0.01:
            out.append(f"{name} {ang:.1f} deg")
    return ", ".join(out) or "scaled unevenly"


def geometry_affine(geometry) -> np.ndarray:
    """The voxel-to-world affine (RAS, NIfTI's convention) of a SimpleITK-order :class:`Geometry` (3D)."""
    m = np.asarray(geometry.direction, dtype=float).reshape(3, 3) * np.asarray(geometry.spacing)
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = m, geometry.origin
    return _RAS_TO_LPS @ a


def _code(hdr, key: str) -> str:
    c = int(hdr[key])
    return f"{key.split('_')[0]}_code {c} ({_XFORM_NAMES.get(c, 'invalid')})"


def orientation_warnings(hdr, geometry=None) -> list[str]:
    """Why tools may disagree about where this NIfTI image is, and what seg3d uses (empty: they agree).

    ``hdr``: a nibabel NIfTI header; ``geometry``: the 3D :class:`Geometry` SimpleITK read from it (the one seg3d
    uses; without it seg3d's choice is inferred with ITK's rule). Messages do not name the file: callers do.
    """
    qc, sc = int(hdr["qform_code"]), int(hdr["sform_code"])
    shape = hdr.get_data_shape()
    if len(shape) < 3:
        return []
    if qc == 0 and sc == 0:
        return [("neither a qform nor a sform is set (both codes 0): seg3d (ITK) places the image with origin 0 "
                 "and no rotation, nibabel and most viewers centre it and flip x; the mask gets the same header")]
    q, s = hdr.get_qform(), hdr.get_sform()
    used = geometry_affine(geometry) if geometry is not None else None
    out = []
    if sc > 0 and not _is_rotation_times_spacing(s[:3, :3]):
        if qc > 0:
            d = _corner_distance(q, s, shape)
            out.append(f"the sform ({_code(hdr, 'sform_code')}) is not a rotation ({_shear_degrees(s[:3, :3])}), "
                       f"so seg3d uses the qform ({_code(hdr, 'qform_code')}); sform-first tools (nibabel, FSL, "
                       f"most viewers) place the image up to {d:.2f} mm elsewhere")
        return out
    if qc > 0 and sc > 0:
        d = _corner_distance(q, s, shape)
        if d > _TOL_MM:
            if used is not None:
                by_q, by_s = _corner_distance(used, q, shape), _corner_distance(used, s, shape)
                uses_s = by_s <= by_q
            else:
                uses_s = sc == 1
            which, other = ("sform", "qform") if uses_s else ("qform", "sform")
            out.append(f"the qform ({_code(hdr, 'qform_code')}) and the sform ({_code(hdr, 'sform_code')}) place "
                       f"the image up to {d:.2f} mm apart; seg3d uses the {which}, {other}-first tools "
                       f"(" + ("nibabel, FSL, most viewers" if other == "sform" else "some older tools") +
                       ") use the " + other + "; masks keep both")
    return out


def file_orientation_warnings(path: str | Path, geometry=None) -> list[str]:
    """:func:`orientation_warnings` of a NIfTI file (empty for other formats or an unreadable header)."""
    if not is_nifti(path):
        return []
    try:
        hdr = load_header(path)
    except Seg3dError:
        return []  # the reader reports unreadable files
    return orientation_warnings(hdr, geometry)


def unreadable_reason(path: str | Path) -> str | None:
    """Why ITK cannot read a NIfTI file whose header nibabel can, in the user's terms (None: no known reason)."""
    if not is_nifti(path):
        return None
    try:
        hdr = load_header(path)
    except Seg3dError:
        return None
    qc, sc = int(hdr["qform_code"]), int(hdr["sform_code"])
    s = hdr.get_sform()
    if sc > 0 and qc == 0 and not _is_rotation_times_spacing(s[:3, :3]):
        return (f"the sform ({_code(hdr, 'sform_code')}) is not a rotation ({_shear_degrees(s[:3, :3])}) and there "
                "is no qform (qform_code 0): seg3d (ITK) cannot place this image; resample it onto a grid without "
                "shear, or give it a qform")
    return None
