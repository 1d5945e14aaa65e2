"""The distillation loss against values computed by hand (numpy, independent of the implementation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def _softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_kl_at_temperature_matches_hand_computation():
    from seg3d.distill.loss import kl_soft_loss

    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 2, 2, 2))
    p = _softmax(rng.normal(size=(2, 3, 2, 2, 2)) * 2)
    for T in (1.0, 2.0, 4.0):
        t = _softmax(np.log(p) / T)          # teacher probabilities softened: p^(1/T), renormalised
        q = _softmax(z / T)
        want = T * T * np.mean(np.sum(t * (np.log(t) - np.log(q)), axis=1))
        got = float(kl_soft_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(p, dtype=torch.float32), T))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_kl_of_one_voxel_by_hand():
    """Two classes, one voxel, T = 1: KL((0.8, 0.2) || softmax(0, 0) = (0.5, 0.5)) = 0.8 ln 1.6 + 0.2 ln 0.4."""
    from seg3d.distill.loss import kl_soft_loss

    logits = torch.zeros(1, 2, 1, 1, 1)
    teacher = torch.tensor([0.8, 0.2]).reshape(1, 2, 1, 1, 1)
    want = 0.8 * np.log(1.6) + 0.2 * np.log(0.4)
    assert float(kl_soft_loss(logits, teacher, 1.0)) == pytest.approx(want, rel=1e-5)
    # equal distributions: zero
    assert float(kl_soft_loss(torch.log(teacher), teacher, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_alpha_mixes_soft_and_hard_and_unlabelled_samples_only_learn_the_teacher():
    from seg3d.distill.loss import DistillationLoss, kl_soft_loss
    from seg3d.losses import build_loss

    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(2, 3, 4, 4, 4)), dtype=torch.float32)
    soft = torch.softmax(torch.tensor(rng.normal(size=(2, 3, 4, 4, 4)), dtype=torch.float32), 1)
    label = torch.tensor(rng.integers(0, 3, size=(2, 1, 4, 4, 4)))
    batch = {"soft": soft, "label": label, "labelled": torch.tensor([True, False])}
    hard_fn = build_loss("ce_dice", 3)
    for alpha in (0.0, 0.3, 1.0):
        got = float(DistillationLoss(3, temperature=2.0, alpha=alpha)(z, batch))
        want = alpha * float(kl_soft_loss(z, soft, 2.0)) + (1 - alpha) * float(hard_fn(z[:1], label[:1]))
        assert got == pytest.approx(want, rel=1e-5)
    # no labelled sample: the hard term is absent
    none = dict(batch, labelled=torch.tensor([False, False]))
    assert float(DistillationLoss(3, alpha=0.5)(z, none)) == pytest.approx(0.5 * float(kl_soft_loss(z, soft)),
                                                                          rel=1e-5)


def test_deep_supervision_weights_the_soft_term_per_level():
    from seg3d.distill.loss import DistillationLoss, kl_soft_loss
    from seg3d.losses import deep_supervision_weights

    rng = np.random.default_rng(2)
    outs = [torch.tensor(rng.normal(size=(1, 2, *s)), dtype=torch.float32) for s in ((8, 8, 8), (4, 4, 4))]
    soft = torch.softmax(torch.tensor(rng.normal(size=(1, 2, 8, 8, 8)), dtype=torch.float32), 1)
    batch = {"soft": soft, "label": torch.zeros(1, 1, 8, 8, 8, dtype=torch.long), "labelled": torch.tensor([False])}
    w = deep_supervision_weights([(8, 8, 8), (4, 4, 4)])
    coarse = soft.reshape(1, 2, 4, 2, 4, 2, 4, 2).mean((3, 5, 7))  # each coarse voxel: mean of its 2x2x2 block
    want = w[0] * float(kl_soft_loss(outs[0], soft)) + w[1] * float(kl_soft_loss(outs[1], coarse))
    assert float(DistillationLoss(2, alpha=1.0)(outs, batch)) == pytest.approx(want, rel=1e-5)


def test_soft_dice_is_zero_for_a_perfect_student():
    from seg3d.distill.loss import DistillationLoss

    onehot = torch.zeros(1, 3, 4, 4, 4)
    onehot[:, 1, :2] = 1
    onehot[:, 2, 2:3] = 1
    onehot[:, 0, 3:] = 1
    batch = {"soft": onehot, "label": onehot.argmax(1, keepdim=True), "labelled": torch.tensor([False])}
    perfect = float(DistillationLoss(3, alpha=1.0, soft="dice")(onehot * 50, batch))
    wrong = float(DistillationLoss(3, alpha=1.0, soft="dice")(onehot.roll(1, dims=1) * 50, batch))  # every voxel wrong
    assert perfect < 1e-3 and wrong > 0.9


@pytest.mark.parametrize("kw", [{"temperature": 0}, {"alpha": 1.5}, {"soft": "mse"}])
def test_bad_values_are_user_errors(kw):
    from seg3d.distill.loss import DistillationLoss
    from seg3d.errors import Seg3dError

    with pytest.raises(Seg3dError):
        DistillationLoss(3, **kw)
