"""Training losses: cross-entropy plus a soft region loss (Dice or Tversky), with deep supervision.

``build_loss(name, num_classes, batch_dice=True, **kw)`` returns a module called as
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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg3d.errors import Seg3dError

# MONAI's losses imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

SMOOTH = 1e-5

# name -> factory(num_classes, batch_dice, **options) -> (region loss, pixel loss); a new loss is one factory
# with @register_loss("name") (here, or in a module imported before build_loss is called)
LossFactory = Callable[..., "tuple[nn.Module, nn.Module]"]
LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str):
    """Decorator registering ``factory(num_classes, batch_dice, **options) -> (region, pixel)`` as ``name``.

    ``build_loss`` combines them as ``weight_ce * pixel + weight_region * region`` under deep supervision.
    """
    def deco(factory: LossFactory) -> LossFactory:
        LOSSES[name] = factory
        return factory

    return deco


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

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

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


def _region_options(batch_dice: bool) -> dict:
    return {"include_background": False, "to_onehot_y": True, "softmax": True, "batch": batch_dice,
            "smooth_nr": SMOOTH, "smooth_dr": SMOOTH}


@register_loss("ce_dice")
def _ce_dice(num_classes: int, batch_dice: bool) -> tuple[nn.Module, nn.Module]:
    from monai.losses import DiceLoss

    return DiceLoss(**_region_options(batch_dice)), _CE()


@register_loss("tversky")
def _tversky(num_classes: int, batch_dice: bool, alpha: float = 0.3, beta: float = 0.7) -> tuple[nn.Module, nn.Module]:
    from monai.losses import TverskyLoss

    alpha, beta = float(alpha), float(beta)
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise Seg3dError(f"tversky needs alpha, beta >= 0 and not both 0 (got alpha={alpha}, beta={beta})")
    return TverskyLoss(alpha=alpha, beta=beta, **_region_options(batch_dice)), _CE()


@register_loss("focal")
def _focal(num_classes: int, batch_dice: bool, gamma: float = 2.0) -> tuple[nn.Module, nn.Module]:
    from monai.losses import DiceLoss, FocalLoss

    return DiceLoss(**_region_options(batch_dice)), FocalLoss(to_onehot_y=True, use_softmax=True,
                                                              gamma=float(gamma))


def build_loss(name: str, num_classes: int, batch_dice: bool = True, **kw) -> nn.Module:
    """The training loss ``name`` for ``num_classes`` classes (background included), from :data:`LOSSES`.

    ``ce_dice``: CE + soft Dice over the foreground classes (smooth 1e-5; ``batch_dice`` pools the batch as one
    volume, as nnU-Net does for 3D). ``tversky``: CE + Tversky with ``alpha`` (false-positive weight, default
    0.3) and ``beta`` (false-negative weight, default 0.7): beta > alpha favours recall of small structures.
    ``focal``: focal loss (``gamma`` 2) + soft Dice. Extra options: ``weight_ce``, ``weight_region`` (1, 1).
    Deep-supervision weights are derived from the outputs actually passed (see module doc).

    Raises:
        Seg3dError: an unknown name or option, fewer than 2 classes, invalid option values.
    """
    if num_classes < 2:
        raise Seg3dError(f"a segmentation loss needs at least 2 classes (background + 1), got {num_classes}")
    if name not in LOSSES:
        raise Seg3dError(f"unknown loss '{name}' (choose from {', '.join(LOSSES)})")
    weight_ce = float(kw.pop("weight_ce", 1.0))
    weight_region = float(kw.pop("weight_region", 1.0))
    try:
        region, ce = LOSSES[name](num_classes, batch_dice, **kw)
    except TypeError:
        raise Seg3dError(f"loss '{name}' does not take option(s): {', '.join(sorted(kw))}") from None
    return DeepSupervisionLoss(RegionCELoss(region, ce, weight_ce, weight_region))
