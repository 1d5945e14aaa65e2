"""NIfTI reading: same image as SimpleITK, but truncated gzip and stored NaN/Inf never pass silently."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from seg3d.errors import Seg3dError
from seg3d.io.image import read_image
from seg3d.io.niigz import SMALL_GZ_BYTES, read_sitk, read_sitk_checked


def _write(path: Path, arr: np.ndarray, spacing=(0.7, 0.8, 2.5)) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(img, str(path), path.name.endswith(".gz"))
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A float .nii.gz above the in-Python inflation threshold (SimpleITK reads it directly)."""
    arr = np.random.default_rng(0).normal(size=(80, 80, 80)).astype(np.float32)
    arr[3, 4, 5], arr[6, 7, 8] = np.nan, -np.inf
    p = _write(tmp_path_factory.mktemp("big") / "big.nii.gz", arr)
    assert p.stat().st_size > SMALL_GZ_BYTES
    return p


def test_small_file_reads_exactly_like_simpleitk(tmp_path):
    import SimpleITK as sitk

    arr = np.random.default_rng(1).integers(0, 300, (7, 9, 11)).astype(np.int16)
    p = _write(tmp_path / "s.nii.gz", arr)
    a, b = read_sitk(p), sitk.ReadImage(str(p))
    assert (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == \
        (b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    assert a.GetPixelID() == b.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), arr)


@pytest.mark.parametrize("which", ["small", "big"])
def test_truncated_gzip_is_an_error(tmp_path, big, which):
    src = big if which == "big" else _write(tmp_path / "s.nii.gz", np.ones((8, 9, 10), np.float32) * 3)
    data = src.read_bytes()
    p = tmp_path / "t.nii.gz"
    p.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(Seg3dError, match="t.nii.gz.*gzip"):
        read_image(p)


def test_multi_member_gzip_is_valid(tmp_path, big):
    raw = gzip.decompress(big.read_bytes())
    p = tmp_path / "m.nii.gz"
    p.write_bytes(gzip.compress(raw[:1_000_000]) + gzip.compress(raw[1_000_000:]))
    np.testing.assert_array_equal(read_image(p).array, read_image(big).array)


def test_stored_nan_inf_are_counted(tmp_path, big):
    arr = np.ones((5, 6, 7), np.float64)
    arr[1, 1, 1] = np.nan
    small, plain = _write(tmp_path / "s.nii.gz", arr), _write(tmp_path / "p.nii", arr)
    for path, expected in ((small, 1), (plain, 1), (big, 2)):
        assert read_sitk_checked(path)[1] == expected, path
