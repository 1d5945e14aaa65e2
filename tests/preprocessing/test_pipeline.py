"""preprocess_case / revert_to_original: shapes, spacing, label mapping, round trips incl. reorientation."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from seg3d.errors import Seg3dError
from seg3d.preprocessing import CaseProperties, indices_to_labels, preprocess_case, revert_to_original
from seg3d.synthetic import make_case


def _case(seed=0, permute=False, shape=(16, 48, 48), spacing=(3.0, 1.0, 1.0)):
    img, lab, geo = make_case(np.random.default_rng(seed), shape=shape, spacing_zyx=spacing, permute_axes=permute)
    return img[None], lab, geo


def _one_hot(seg: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(seg[0].astype(np.int64)), k).permute(3, 0, 1, 2).float()


def _dice(a, b, c):
    x, y = a == c, b == c
    return 2 * np.logical_and(x, y).sum() / max(x.sum() + y.sum(), 1)


def _with_spacing(plan, spacing, aniso=0):
    cfg = replace(plan.config("3d_fullres"), spacing=spacing, anisotropic_axis=aniso)
    return plan.with_config(cfg), cfg


@pytest.mark.parametrize("permute", [False, True])
def test_identity_round_trip_is_exact(tiny_plan, permute):
    data, lab, geo = _case(1, permute)
    cfg = tiny_plan.config("3d_fullres")
    pdata, pseg, props = preprocess_case(data, geo, tiny_plan, cfg, seg=lab)
    assert props.shape_after_crop == props.shape_after_resample  # spacing already the target
    assert pdata.dtype == np.float32 and pseg.dtype == np.int16 and pseg.shape[0] == 1
    assert pdata.shape[1:] == pseg.shape[1:]
    back = revert_to_original(_one_hot(pseg, 4), props, tiny_plan, cfg)
    assert back.shape == lab.shape
    np.testing.assert_array_equal(back, lab)
    props2 = CaseProperties.from_dict(props.to_dict())
    assert props2 == props


@pytest.mark.parametrize("permute", [False, True])
def test_resampling_round_trip_dice(tiny_plan, permute):
    data, lab, geo = _case(2, permute)
    plan, cfg = _with_spacing(tiny_plan, (2.0, 0.7, 0.8), aniso=None)
    pdata, pseg, props = preprocess_case(data, geo, plan, cfg, seg=lab)
    canon_spacing = np.asarray(props.spacing_canonical)
    expect = np.round(np.asarray(props.shape_after_crop) * canon_spacing / np.asarray(cfg.spacing))
    assert props.shape_after_resample == tuple(int(v) for v in expect)
    assert set(np.unique(pseg)) <= set(np.unique(lab))
    back = revert_to_original(_one_hot(pseg, 4), props, plan, cfg)
    assert back.shape == lab.shape
    for c in (1, 2, 3):
        if (lab == c).sum() > 50:
            assert _dice(back, lab, c) >= 0.95, c
    probs = revert_to_original(_one_hot(pseg, 4), props, plan, cfg, out="probs")
    assert probs.shape == (4, *lab.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-2)
    assert (np.argmax(probs, 0) == back).mean() > 0.999


def test_canonical_orientation_matches_between_permuted_and_plain(tiny_plan):
    """The same phantom stored with x and z swapped preprocesses to the same canonical arrays."""
    a = make_case(np.random.default_rng(5), shape=(16, 40, 40))
    b = make_case(np.random.default_rng(5), shape=(16, 40, 40), permute_axes=True)
    cfg = tiny_plan.config("3d_fullres")
    da, sa, pa = preprocess_case(a[0][None], a[2], tiny_plan, cfg, seg=a[1])
    db, sb, pb = preprocess_case(b[0][None], b[2], tiny_plan, cfg, seg=b[1])
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_allclose(da, db, atol=1e-5)
    assert pa.spacing_canonical == pb.spacing_canonical
    assert not pb.reorientation.is_identity


def test_anisotropic_axis_is_nearest(tiny_plan):
    """Upsampling the coarse axis repeats slices (order 0) instead of blending them."""
    data, lab, geo = _case(3)
    plan, cfg = _with_spacing(tiny_plan, (1.0, 1.0, 1.0), aniso=0)
    pdata, pseg, props = preprocess_case(data, geo, plan, cfg, seg=lab)
    assert props.shape_after_resample[0] == 3 * props.shape_after_crop[0]
    # every resampled slice equals one of the cropped slices' in-plane resampling: slices come in triples
    np.testing.assert_array_equal(pdata[:, 0::3], pdata[:, 1::3])
    np.testing.assert_array_equal(pseg[:, 1::3], pseg[:, 2::3])


def test_label_values_mapped_and_undeclared_rejected(tiny_plan):
    data, lab, geo = _case(4)
    plan = replace(tiny_plan, labels={"background": 0, "core": 10, "rim": 20, "satellite": 30})
    cfg = plan.config("3d_fullres")
    pdata, pseg, props = preprocess_case(data, geo, plan, cfg, seg=lab * 10)
    assert set(np.unique(pseg)) <= {0, 1, 2, 3}
    back = revert_to_original(_one_hot(pseg, 4), props, plan, cfg)
    np.testing.assert_array_equal(indices_to_labels(back, plan.label_values), lab * 10)
    bad = lab.copy()
    bad[bad == 3] = 7
    with pytest.raises(Seg3dError, match="7"):
        preprocess_case(data, geo, tiny_plan, cfg, seg=bad, case_id="case_x")


def test_2d_keeps_slice_axis(tiny_plan):
    data, lab, geo = _case(6)
    cfg3 = tiny_plan.config("3d_fullres")
    cfg = replace(cfg3, name="2d", spacing=(0.5, 0.5), slice_axis=0, anisotropic_axis=None)
    pdata, pseg, props = preprocess_case(data, geo, tiny_plan, cfg, seg=lab)
    assert props.shape_after_resample[0] == props.shape_after_crop[0]
    assert props.shape_after_resample[1:] == tuple(2 * s for s in props.shape_after_crop[1:])
    back = revert_to_original(_one_hot(pseg, 4), props, tiny_plan, cfg)
    for c in (1, 2):
        assert _dice(back, lab, c) >= 0.95


def test_revert_slabs_equal_whole(tiny_plan):
    """Slab-wise reverting gives the same labels whatever the slab size."""
    data, lab, geo = _case(7, permute=True)
    plan, cfg = _with_spacing(tiny_plan, (2.5, 1.3, 1.3), aniso=None)
    pdata, pseg, props = preprocess_case(data, geo, plan, cfg, seg=lab)
    probs = torch.softmax(torch.randn(4, *props.shape_after_resample), 0)
    big = revert_to_original(probs, props, plan, cfg, slab_bytes=2**34)
    small = revert_to_original(probs.half(), props, plan, cfg, slab_bytes=1)
    assert (big == small).mean() > 0.999
