"""The distillation loss: ``alpha * soft(student, teacher) + (1 - alpha) * CE+Dice(student, reference labels)``.

Soft term (``soft="kl"``, the default): Hinton et al.'s KL divergence at temperature T, scaled by T² so its
gradients keep their size as T changes:

    T² · mean over voxels of  Σ_k t_k (log t_k − log q_k),   t = softmax(log p / T),  q = softmax(z / T)

where ``p`` are the teacher's (averaged) probabilities -- the teacher's logits are not kept, and softening the
probabilities as ``p^(1/T)`` renormalised is exactly what softening its logits would give for one network --
and ``z`` the student's logits. ``soft="dice"``: soft Dice (MONAI, foreground classes, batch Dice as in
training) between the student's softmax and the teacher's probabilities.

Hard term: the training loss (``ce_dice``), only over the samples whose case has reference labels; a batch of
unlabelled cases only learns the teacher. Deep supervision as in training: each decoder output gets the
training weights (:func:`seg3d.losses.deep_supervision_weights`); the labels are subsampled (nearest) as in
training, the teacher's probabilities averaged over each output voxel's footprint (area interpolation).

Defaults, and why: ``temperature = 1``: the targets already average 5 folds x 8 mirrorings, so they are soft
where the teacher is unsure (boundaries) without flattening; T > 1 raises the weight of the near-zero
probabilities, which float16 storage (and top-k storage, where they are 0) keeps only coarsely.
``alpha = 0.5``: the reference labels stay half of the signal (the Dice term is what the metric rewards and
keeps the student anchored where the teacher is wrong); the teacher supplies the other half. Neither was tuned
on the benchmark data (benchmarks/RESULTS.md reports what these defaults gave).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg3d.errors import Seg3dError
from seg3d.losses import build_loss, deep_supervision_weights

SOFT_LOSSES = ("kl", "dice")
DEFAULT_TEMPERATURE = 1.0
DEFAULT_ALPHA = 0.5
_EPS = 1e-8


def kl_soft_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
                 ) -> torch.Tensor:
    """T² · mean over voxels of KL(t || q) for logits ``(B, K, *spatial)`` and probabilities of the same shape."""
    t_log = torch.log_softmax(torch.log(teacher.float().clamp_min(_EPS)) / temperature, dim=1)
    q_log = torch.log_softmax(logits.float() / temperature, dim=1)
    kl = (t_log.exp() * (t_log - q_log)).sum(1)
    return kl.mean() * temperature ** 2


def resize_probabilities(p: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``p`` (B, K, *spatial) to ``shape``: the mean over each target voxel's footprint (area interpolation)."""
    shape = tuple(int(s) for s in shape)
    if tuple(p.shape[2:]) == shape:
        return p
    return F.interpolate(p, size=shape, mode="area")


class DistillationLoss(nn.Module):
    """``loss(outputs, batch)``: outputs a logits tensor or the deep-supervision list; batch a dict with
    ``"label"`` (B, 1, *patch) int64, ``"soft"`` (B, K, *patch) float probabilities, ``"labelled"`` (B,) bool.

    Args:
        num_classes: K, background included.
        temperature: T > 0 (KL only).
        alpha: weight of the soft term in [0, 1]; ``1 - alpha`` goes to CE+Dice on the reference labels.
        soft: ``"kl"`` or ``"dice"``.
        batch_dice: pool the batch in the Dice terms (the configuration's ``batch_dice``).

    Raises:
        Seg3dError: a value out of range or an unknown soft loss.
    """

    def __init__(self, num_classes: int, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA,
                 soft: str = "kl", batch_dice: bool = True):
        super().__init__()
        check_distillation_values(temperature, alpha, soft)
        self.temperature, self.alpha, self.soft_name = float(temperature), float(alpha), soft
        self.hard = build_loss("ce_dice", num_classes, batch_dice=batch_dice)
        if soft == "dice":
            from monai.losses import DiceLoss

            self.soft_dice = DiceLoss(include_background=False, softmax=True, batch=batch_dice,
                                      smooth_nr=1e-5, smooth_dr=1e-5)

    def soft_term(self, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.soft_name == "kl":
            return kl_soft_loss(logits, teacher, self.temperature)
        return self.soft_dice(logits.float(), teacher.float())

    def forward(self, outputs, batch: dict) -> torch.Tensor:
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        dev = outs[0].device
        with torch.autocast(device_type=dev.type, enabled=False):
            soft_t = batch["soft"].to(dev, non_blocking=True).float()
            weights = deep_supervision_weights([tuple(o.shape[2:]) for o in outs])
            soft = outs[0].new_zeros((), dtype=torch.float32)
            for w, o in zip(weights, outs):
                if w:
                    soft = soft + w * self.soft_term(o.float(), resize_probabilities(soft_t, o.shape[2:]))
            loss = self.alpha * soft
            labelled = batch.get("labelled")
            if self.alpha < 1.0:
                sel = torch.ones(outs[0].shape[0], dtype=torch.bool) if labelled is None else labelled.bool()
                if bool(sel.any()):
                    idx = torch.nonzero(sel.cpu()).flatten().to(dev)
                    y = batch["label"].to(dev, non_blocking=True)
                    picked = [o.index_select(0, idx) for o in outs]
                    hard = self.hard(picked if len(picked) > 1 else picked[0], y.index_select(0, idx))
                    loss = loss + (1.0 - self.alpha) * hard
        return loss


def check_distillation_values(temperature: float, alpha: float, soft: str = "kl") -> None:
    """Temperature > 0, alpha in [0, 1], a known soft loss; else a Seg3dError naming the value."""
    if not temperature > 0:
        raise Seg3dError(f"--temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise Seg3dError(f"--alpha must be in [0, 1] (weight of the teacher's soft targets), got {alpha}")
    if soft not in SOFT_LOSSES:
        raise Seg3dError(f"unknown soft loss '{soft}' (choose from {', '.join(SOFT_LOSSES)})")
