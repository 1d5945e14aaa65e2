"""Sampling and augmentation of image, label and teacher probabilities together; target storage."""
from __future__ import annotations

import numpy as np
import torch


def test_sample_aligned_draws_the_same_patches_as_sample_patch():
    from seg3d.data.sampling import sample_aligned, sample_patch

    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 10, 20, 20)).astype(np.float32)
    seg = rng.integers(0, 3, size=(1, 10, 20, 20)).astype(np.int16)
    soft = rng.random(size=(3, 10, 20, 20)).astype(np.float16)
    fg = {1: np.argwhere(seg[0] == 1), 2: np.argwhere(seg[0] == 2)}
    for force in (False, True):
        a = sample_patch(data, seg, fg, (8, 16, 16), np.random.default_rng(5), force, (8, 24, 24))
        b = sample_aligned([(data, 0), (seg, 0), (soft, 0)], fg, (8, 16, 16), np.random.default_rng(5), force,
                           (8, 24, 24))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        # the soft array is cut at the same place: where the image patch equals a region of data, so does soft
        assert b[2].shape == (3, 8, 24, 24) and b[2].dtype == np.float16


def test_soft_targets_follow_the_image_through_rotation_scaling_and_mirroring():
    """One-hot teacher = the label: after the spatial transforms (linear) its argmax is the label (nearest),
    away from class boundaries; it sums to 1; intensity transforms never touch it."""
    from seg3d.data.augmentation import AugmentationParams, augment_batch, region_size

    rng = np.random.default_rng(0)
    params = AugmentationParams(p_rotation=1.0, p_scale=1.0, rotation_deg=20, p_brightness=1.0, p_noise=1.0,
                                p_mirror=0.5)
    # as the loader samples: a region that every transformed patch fits in (isotropic: the anisotropic axis
    # is not enlarged, and a zoomed-out patch reaches past it, where the padding decides)
    region = region_size((12, 24, 24), params, None)
    z, y, x = np.mgrid[:region[0], :region[1], :region[2]]
    lab = ((z // 6 + y // 10 + x // 10) % 3).astype(np.int64)[None, None].repeat(2, 0)  # blocks
    label = torch.tensor(lab)
    soft = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    image = label.float() * 3 + 1
    img2, lab2, soft2 = augment_batch(image, label.clone(), (12, 24, 24), params, rng, (0, 1, 2), soft=soft)
    assert soft2.shape == (2, 3, 12, 24, 24)
    assert torch.allclose(soft2.sum(1), torch.ones(2, 12, 24, 24), atol=1e-5)
    confident = soft2.max(1).values > 0.9
    assert confident.float().mean() > 0.5
    assert torch.equal(soft2.argmax(1)[confident], lab2[:, 0][confident])
    # the same draws without soft targets give the same image and label
    img3, lab3 = augment_batch(image, label.clone(), (12, 24, 24), params, np.random.default_rng(0), (0, 1, 2))
    assert torch.allclose(img2, img3) and torch.equal(lab2, lab3)


def test_dense_and_topk_storage_round_trip():
    from seg3d.distill.targets import TargetStorage, decode, encode

    rng = np.random.default_rng(0)
    p = torch.softmax(torch.tensor(rng.normal(size=(12, 3, 4, 5)) * 3, dtype=torch.float32), 0)
    dense = encode(p, TargetStorage(max_dense_classes=16))
    assert set(dense) == {"p"} and dense["p"].dtype == np.float16
    assert np.allclose(decode(dense["p"], None, 12), p.numpy(), atol=1e-3)
    top = encode(p, TargetStorage(max_dense_classes=8, top_k=4))
    assert top["p"].shape == (4, 3, 4, 5) and top["idx"].dtype == np.uint8
    back = decode(top["p"], top["idx"], 12)
    kept = torch.topk(p, 4, dim=0)
    want = torch.zeros_like(p).scatter(0, kept.indices, kept.values)
    want = want / want.sum(0, keepdim=True)
    assert np.allclose(back, want.numpy(), atol=2e-3)
    assert np.array_equal(back.argmax(0), p.numpy().argmax(0))
    # padding outside the image (all zeros) decodes as background
    assert np.array_equal(decode(np.zeros((4, 1, 1, 1), np.float16), np.zeros((4, 1, 1, 1), np.uint8), 12)[:, 0, 0, 0],
                          np.eye(12)[0])
