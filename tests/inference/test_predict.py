"""The Predictor end to end on a tiny model folder: exact headers for random directions, origins and
spacings, masks that land on the right voxels, multi-channel input, fold ensembles, the SimpleITK API."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import make_model_dir, random_geometry, write_case

from seg3d.errors import Seg3dError
from seg3d.inference import Predictor
from seg3d.io.image import Geometry, read_header, read_image, write_image
from seg3d.runners.local import predict_folder


class BrightIsCore(torch.nn.Module):
    """Pointwise stand-in network: class 1 ('core') wherever the normalized intensity is high."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), 10 * (x[:, :1] - 1.0), -10 - x[:, :1].abs(),
                          torch.full_like(x[:, :1], -20)], dim=1)


def _blob_case(geometry: Geometry, rng) -> tuple[np.ndarray, np.ndarray]:
    """An off-centre, asymmetric bright box (so any flip or permutation would move it)."""
    shape = geometry.shape
    img = rng.normal(100, 2, shape).astype(np.float32)
    blob = np.zeros(shape, bool)
    lo = [max(1, s // 5) for s in shape]
    hi = [max(l + 2, s // 2 + s // 6) for l, s in zip(lo, shape)]
    blob[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    img[blob] = 1000
    return img, blob


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_header_and_mask_on_the_right_voxels(tmp_path, tiny_model_dir, seed):
    rng = np.random.default_rng(seed)
    geo = random_geometry(rng, size=tuple(int(v) for v in rng.integers(12, 40, size=3)))
    img, blob = _blob_case(geo, rng)
    in_dir = tmp_path / "in"
    write_image(img, geo, in_dir / "case_0000.nii.gz")
    p = Predictor(tiny_model_dir, folds=[0], device="cpu", tta=False)
    p.networks = [BrightIsCore()]
    s = predict_folder(in_dir, tmp_path / "out", tiny_model_dir, predictor=p)
    assert s["predicted"] == 1, s
    out = read_image(tmp_path / "out" / "case.nii.gz")
    assert out.geometry == read_header(in_dir / "case_0000.nii.gz").geometry  # the exact header
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 1}
    assert _dice(out.array == 1, blob) > 0.85, "mask does not overlay the bright region"


def test_random_network_outputs_open_with_exact_header_and_dtypes(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(7)
    in_dir = tmp_path / "in"
    geos = {}
    for i, dtype in enumerate((np.uint8, np.int16, np.float32)):
        geo = random_geometry(rng, size=(30, 26, 9))
        geos[f"c{i}"] = geo
        write_case(in_dir, f"c{i}", geo, seed=i, dtype=dtype)
    s = predict_folder(in_dir, tmp_path / "out", tiny_model_dir, folds=[0, 1], tta=True, device="cpu")
    assert s["predicted"] == 3 and not s["failed"]
    for cid in geos:
        out = read_image(tmp_path / "out" / f"{cid}.nii.gz")
        assert out.geometry == read_header(in_dir / f"{cid}_0000.nii.gz").geometry
        assert set(np.unique(out.array)) <= {0, 1, 2, 3}


def test_multichannel_and_channel_count_errors(tmp_path, two_channel_plan):
    model = make_model_dir(tmp_path / "model2", two_channel_plan, folds=(0,))
    p = Predictor(model, device="cpu", tta=False)
    geo = Geometry((33, 20, 7), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    data = np.random.default_rng(0).normal(size=(2, *geo.shape)).astype(np.float32)
    labels = p.predict_case(data, geo)
    assert labels.shape == geo.shape and labels.dtype == np.uint8
    with pytest.raises(Seg3dError, match="channel"):
        p.predict_case(data[:1], geo)
    bad = data.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(Seg3dError, match="NaN"):
        p.predict_case(bad, geo)


def test_fold_ensemble_is_the_mean_of_the_folds(tiny_model_dir):
    x = np.random.default_rng(1).normal(size=(1, 12, 40, 36)).astype(np.float32)
    # fp32: an exactness test (auto would pick bf16 on CPUs with native bf16)
    both = Predictor(tiny_model_dir, folds="all-available", device="cpu", tta=False,
                     precision="fp32").predict_preprocessed(x)
    f0 = Predictor(tiny_model_dir, folds=[0], device="cpu", tta=False, precision="fp32").predict_preprocessed(x)
    f1 = Predictor(tiny_model_dir, folds=[1], device="cpu", tta=False, precision="fp32").predict_preprocessed(x)
    assert (f0 - f1).abs().max() > 1e-3  # two different networks
    torch.testing.assert_close(both, (f0 + f1) / 2, atol=1e-5, rtol=1e-5)


def test_simpleitk_api_keeps_geometry_and_missing_fold_is_named(tiny_model_dir):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.random.default_rng(2).normal(size=(10, 30, 30)).astype(np.float32))
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetOrigin((4.0, 5.0, 6.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    p = Predictor(tiny_model_dir, folds=[1], device="cpu", tta=False)
    out = p.predict_case(img)  # a SimpleITK image in: a SimpleITK image out, on the same grid
    assert Geometry.from_sitk(out) == Geometry.from_sitk(img)
    with pytest.raises(Seg3dError, match="fold"):
        Predictor(tiny_model_dir, folds=[4], device="cpu")
