"""Loss values against hand computation on tiny tensors, and the deep-supervision weighting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg3d.errors import Seg3dError
from seg3d.losses import build_loss, deep_supervision_weights, downsample_target

S = 1e-5


def _softmax(x: np.ndarray) -> np.ndarray:  # x (B, K, ...) -> softmax over K, by hand
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 1, 2, 3)).astype(np.float64)
    target = rng.integers(0, 3, size=(2, 1, 1, 2, 3))
    target[0, 0, 0, 0, 0], target[1, 0, 0, 0, 0] = 1, 2  # every class present somewhere
    return logits, target


def _hand(logits, target, alpha, beta, batch):
    p = _softmax(logits)
    g = np.stack([(target[:, 0] == k) for k in range(p.shape[1])], axis=1).astype(np.float64)
    ce = -np.mean(np.log(np.take_along_axis(p, target, axis=1)))
    axes = (0, 2, 3, 4) if batch else (2, 3, 4)
    tp, fp, fn = (p * g).sum(axes), (p * (1 - g)).sum(axes), ((1 - p) * g).sum(axes)
    score = (tp + S) / (tp + alpha * fp + beta * fn + S)
    region = 1 - score[..., 1:]  # foreground classes only
    return ce + region.mean()


@pytest.mark.parametrize("batch", [True, False])
def test_ce_dice_matches_hand_computation(batch):
    logits, target = _case()
    loss = build_loss("ce_dice", 3, batch_dice=batch)
    got = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    # Dice = Tversky with alpha = beta = 1/2: 2tp / (2tp + fp + fn)
    assert got.item() == pytest.approx(_hand(logits, target, 0.5, 0.5, batch), rel=1e-5)


def test_tversky_matches_hand_computation_and_weights_false_negatives():
    logits, target = _case()
    loss = build_loss("tversky", 3, alpha=0.2, beta=0.8)
    got = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(target)).item()
    assert got == pytest.approx(_hand(logits, target, 0.2, 0.8, True), rel=1e-5)
    # A prediction that misses foreground (FN) costs more under beta > alpha than one that over-segments (FP).
    t = torch.zeros(1, 1, 1, 1, 4, dtype=torch.int64)
    t[..., :2] = 1
    under = torch.tensor([[10., 10, 10, 10], [10., -10, -10, -10]]).reshape(1, 2, 1, 1, 4)  # 1 of 2 found
    over = torch.tensor([[-10., -10, -10, 10], [10., 10, 10, -10]]).reshape(1, 2, 1, 1, 4)  # 2 found + 1 FP
    region = build_loss("tversky", 2, alpha=0.2, beta=0.8, weight_ce=0)
    assert region(under, t).item() > region(over, t).item()


def test_perfect_prediction_has_near_zero_region_loss():
    t = torch.tensor([0, 1, 1, 2]).reshape(1, 1, 1, 1, 4)
    logits = torch.nn.functional.one_hot(t[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 50
    assert build_loss("ce_dice", 3)(logits, t).item() < 1e-4
    assert build_loss("focal", 3)(logits, t).item() < 1e-4


def test_deep_supervision_weights_follow_the_documented_rule():
    assert deep_supervision_weights([(8,), (4,), (2,)]) == pytest.approx([1 / 1.5, 0.5 / 1.5, 0.0])
    assert deep_supervision_weights([(8,), (4,)]) == pytest.approx([1 / 1.5, 0.5 / 1.5])
    assert deep_supervision_weights([(8,)]) == [1.0]
    # UNet++: nested full-resolution heads share the full-resolution weight
    w = deep_supervision_weights([(8,), (4,), (2,), (8,), (8,)])
    assert w == pytest.approx([1 / 4.5, 1 / 3, 0.0, 1 / 4.5, 1 / 4.5])


def test_target_downsampling_is_strided_nearest_even_for_odd_sizes():
    t = torch.arange(5 * 6).reshape(1, 1, 5, 6)
    d = downsample_target(t, (3, 3))
    assert d.tolist() == t[:, :, [0, 2, 4]][:, :, :, [0, 2, 4]].tolist()
    # a strided same-padding convolution gives exactly these shapes
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert tuple(conv(t.float()).shape[2:]) == (3, 3)


def test_deep_supervision_total_is_weighted_sum_of_levels():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 4, 8, 8))
    outs = [torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    loss = build_loss("ce_dice", 3)
    single = build_loss("ce_dice", 3)
    expected = (single(outs[0], target) + 0.5 * single(outs[1], target[:, :, :, ::2, ::2])) / 1.5
    assert loss(outs, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_loss_and_bad_options_are_user_errors():
    with pytest.raises(Seg3dError):
        build_loss("hinge", 3)
    with pytest.raises(Seg3dError):
        build_loss("ce_dice", 3, alpha=0.3)
