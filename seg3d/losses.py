"""Training losses: cross-entropy plus a soft region loss (Dice or Tversky), with deep supervision.

``build_loss(name, num_classes, batch_dice=True, num_outputs=1, **kw)`` returns a module called as
``loss(outputs, target)``: ``outputs`` is a logits tensor ``(B, K, *spatial)`` or the deep-supervision list
(full resolution first, see :mod:`seg3d.nets`), ``target`` is ``(B, 1, *spatial)`` int64 class indices at full
resolution. The target is brought to each output's shape by nearest-neighbour subsampling.

Deep-supervision weights (decided here, used by every network): outputs are grouped by resolution in the order
they first appear; resolution level ``l`` gets weight ``1/2**l``; with three or more levels the coarsest gets 0
(as nnU-Net does: it is too coarse to help, but its term is still computed so DDP sees every parameter used);
several outputs at the same resolution (UNet++'s nested full-resolution heads) share their level's weight
equally; weights are normalised to sum to 1. For a plain U-Net this is exactly nnU-Net's rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg3d.errors import Seg3dError

LOSSES = ("ce_dice", "tversky", "focal")
SMOOTH = 1e-5


def deep_supervision_weights(shapes: Sequence[tuple[int, ...]]) -> list[float]:
    """Weights for outputs of the given spatial shapes (see the module docstring)."""
    levels: list[tuple[int, ...]] = []
    for s in shapes:
        if tuple(s) not in levels:
            levels.append(tuple(s))
    level_w = [1.0 / 2 ** i for i in range(len(levels))]
    if len(levels) >= 3:
        level_w[-1] = 0.0
    counts = [sum(1 for s in shapes if tuple(s) == lv) for lv in levels]
    w = [level_w[levels.index(tuple(s))] / counts[levels.index(tuple(s))] for s in shapes]
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest subsampling of ``target`` (B, 1, *spatial) to ``shape``.

    A stride-s convolution with 'same' padding maps n voxels to ceil(n/s), which is what ``[::s]`` keeps, so the
    target lines up with the decoder level even for odd sizes.
    """
    spatial = tuple(target.shape[2:])
    shape = tuple(int(s) for s in shape)
    if spatial == shape:
        return target
    steps = [max(1, round(t / o)) for t, o in zip(spatial, shape)]
    if all(math.ceil(t / s) == o for t, s, o in zip(spatial, steps, shape)):
        index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in steps)
        return target[index]
    return F.interpolate(target.float(), size=shape, mode="nearest").to(target.dtype)


class RegionCELoss(nn.Module):
    """``w_ce * CE + w_region * region``: region is soft Dice / Tversky over the foreground classes (MONAI)."""

    def __init__(self, region: nn.Module, ce: nn.Module, weight_ce: float = 1.0, weight_region: float = 1.0):
        super().__init__()
        self.region, self.ce = region, ce
        self.weight_ce, self.weight_region = weight_ce, weight_region

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Loss in float32 even under autocast: softmax/log in bf16 loses the small Dice differences.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            target = target.long()
            loss = self.weight_region * self.region(logits, target)
            if self.weight_ce:
                loss = loss + self.weight_ce * self.ce(logits, target)
        return loss


class _CE(nn.Module):
    """Cross-entropy taking the (B, 1, *spatial) target of the contract."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0])


class DeepSupervisionLoss(nn.Module):
    """Applies ``loss`` to each output against the target downsampled to its shape, weighted (module doc)."""

    def __init__(self, loss: nn.Module, num_outputs: int = 1):
        super().__init__()
        self.loss = loss
        self.num_outputs = num_outputs

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("deep-supervision loss got an empty list of outputs")
        if target.ndim != outputs[0].ndim or target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, *spatial) class indices, got {tuple(target.shape)}")
        weights = deep_supervision_weights([tuple(o.shape[2:]) for o in outputs])
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            total = total + w * self.loss(out, downsample_target(target, out.shape[2:]))
        return total


def build_loss(name: str, num_classes: int, batch_dice: bool = True, num_outputs: int = 1,
               **kw) -> nn.Module:
    """The training loss ``name`` for ``num_classes`` classes (background included).

    ``ce_dice``: CE + soft Dice over the foreground classes (smooth 1e-5; ``batch_dice`` pools the batch as one
    volume, as nnU-Net does for 3D). ``tversky``: CE + Tversky with ``alpha`` (false-positive weight, default
    0.3) and ``beta`` (false-negative weight, default 0.7): beta > alpha favours recall of small structures.
    ``focal``: focal loss (``gamma`` 2) + soft Dice. Extra options: ``weight_ce``, ``weight_region`` (1, 1).
    ``num_outputs`` is informative: weights are derived from the outputs actually passed (see module doc).
    """
    from monai.losses import DiceLoss, FocalLoss, TverskyLoss

    if num_classes < 2:
        raise Seg3dError(f"a segmentation loss needs at least 2 classes (background + 1), got {num_classes}")
    weight_ce = float(kw.pop("weight_ce", 1.0))
    weight_region = float(kw.pop("weight_region", 1.0))
    common = {"include_background": False, "to_onehot_y": True, "softmax": True, "batch": batch_dice,
                  "smooth_nr": SMOOTH, "smooth_dr": SMOOTH}
    if name == "ce_dice":
        region = DiceLoss(**common)
        ce: nn.Module = _CE()
    elif name == "tversky":
        alpha, beta = float(kw.pop("alpha", 0.3)), float(kw.pop("beta", 0.7))
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise Seg3dError(f"tversky needs alpha, beta >= 0 and not both 0 (got alpha={alpha}, beta={beta})")
        region = TverskyLoss(alpha=alpha, beta=beta, **common)
        ce = _CE()
    elif name == "focal":
        region = DiceLoss(**common)
        ce = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=float(kw.pop("gamma", 2.0)))
    else:
        raise Seg3dError(f"unknown loss '{name}' (choose from {', '.join(LOSSES)})")
    if kw:
        raise Seg3dError(f"loss '{name}' does not take option(s): {', '.join(sorted(kw))}")
    return DeepSupervisionLoss(RegionCELoss(region, ce, weight_ce, weight_region), num_outputs)
