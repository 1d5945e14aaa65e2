"""NIfTI header variants seen in real files, built with nibabel (shared by the robustness tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (14, 12, 9)  # x, y, z


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", [ax, ay, az], degrees=True).as_matrix()


def oblique(spacing=(1.1, 0.9, 2.5), shift=(0.0, 0.0, 0.0), left_handed: bool = False) -> np.ndarray:
    a = np.eye(4)
    m = rotation(10, 20, 5) @ np.diag(spacing)
    if left_handed:
        m = m @ np.diag([1.0, 1.0, -1.0])
    a[:3, :3], a[:3, 3] = m, np.array([-20.0, 30.0, 10.0]) + np.asarray(shift)
    return a


def _img(cls, data, qform, qcode, sform, scode):
    img = cls(data, None)
    img.header.set_qform(qform, qcode)
    img.header.set_sform(sform, scode)
    return img


def variant(name: str, folder: Path, ending: str = ".nii.gz") -> Path:
    """Write the variant ``name`` (see :data:`VARIANTS`) as ``folder/<name><ending>`` and return its path."""
    import nibabel as nib

    rng = np.random.default_rng(abs(hash(name)) % (1 << 31))
    data = rng.normal(100, 20, SHAPE).astype(np.float32)
    q, s8 = oblique(), oblique(shift=(8.0, 0, 0))
    n1 = nib.Nifti1Image
    if name == "q1_s2_apart":
        img = _img(n1, data, q, 1, s8, 2)
    elif name == "4d_singleton":
        img = _img(n1, data[..., None], q, 1, s8, 2)
        img.header["pixdim"][4] = 2.5
        img.header.set_xyzt_units("mm", "sec")
    elif name == "5d_singletons":
        img = _img(n1, data[..., None, None], q, 1, s8, 1)
    elif name == "qform_only":
        img = _img(n1, data, q, 1, None, 0)
    elif name == "sform_only":
        img = _img(n1, data, None, 0, s8, 2)
    elif name == "codes_0":
        img = _img(n1, data, None, 0, None, 0)
        img.header["pixdim"][1:4] = (1.5, 0.8, 3.0)
    elif name == "qfac_minus1":
        lh = oblique(left_handed=True)
        img = _img(n1, data, lh, 1, lh, 1)
        assert img.header["pixdim"][0] == -1
    elif name == "units_meter":
        img = _img(n1, data, q, 1, q, 1)
        img.header.set_xyzt_units("meter", "msec")
    elif name == "nifti2":
        img = _img(nib.Nifti2Image, data, q, 1, s8, 2)
    elif name == "scaled_int16":
        img = _img(n1, (data * 10).astype(np.int16), q, 1, q, 1)
        img.header.set_slope_inter(0.5, -100.0)
    elif name == "big_endian":
        img = _img(n1, data, q, 1, s8, 1)
        hdr = img.header.as_byteswapped(">")
        img = n1(data.astype(">f4"), None, header=hdr)
    elif name == "intent_extension":
        img = _img(n1, data, q, 1, q, 2)
        img.header.set_intent("z score")
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"scanner note"))
    else:
        raise KeyError(name)
    path = folder / f"{name}{ending}"
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


VARIANTS = ("q1_s2_apart", "4d_singleton", "5d_singletons", "qform_only", "sform_only", "codes_0", "qfac_minus1",
            "units_meter", "nifti2", "scaled_int16", "big_endian", "intent_extension")
