"""Learning-rate schedules driven by the *fraction of training done*, by steps or by a wall-clock budget.

Driving the poly decay with ``elapsed / budget`` instead of ``step / total_steps`` makes the learning rate reach
~0 exactly when a time budget runs out; elapsed time and steps are stored in the checkpoint, so a resumed run
continues the same curve instead of restarting it.
"""
from __future__ import annotations

from dataclasses import dataclass

from seg3d.errors import Seg3dError

# torch imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast


@dataclass(frozen=True)
class Schedule:
    """``poly``: lr * (1 - f)^exponent. ``warmup_poly``: linear warm-up over the first ``warmup`` of the run."""

    base_lr: float = 1e-2
    exponent: float = 0.9
    kind: str = "poly"  # poly | warmup_poly
    warmup: float = 0.0  # fraction of the run
    momentum: float = 0.99
    weight_decay: float = 3e-5

    def lr(self, fraction: float) -> float:
        f = min(max(fraction, 0.0), 1.0)
        if self.kind == "warmup_poly" and self.warmup > 0 and f < self.warmup:
            return self.base_lr * (f + 1e-3) / (self.warmup + 1e-3)
        return self.base_lr * (1.0 - f) ** self.exponent


def default_schedule(optimizer: str, lr: float | None = None) -> Schedule:
    """nnU-Net's SGD (lr 1e-2, Nesterov momentum 0.99, wd 3e-5, poly 0.9); AdamW: lr 1e-3, 5% warm-up.

    ``lr`` replaces the optimizer's base learning rate.
    """
    if lr is not None and not lr > 0:

        raise Seg3dError(f"the learning rate must be > 0, got {lr}")
    if optimizer == "sgd":
        return Schedule(base_lr=lr or 1e-2)
    if optimizer == "adamw":
        return Schedule(base_lr=lr or 1e-3, kind="warmup_poly", warmup=0.05, weight_decay=1e-2)

    raise Seg3dError(f"unknown optimizer '{optimizer}' (use sgd or adamw)")


def build_optimizer(params, optimizer: str, sched: Schedule):
    import torch

    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=sched.base_lr, momentum=sched.momentum, nesterov=True,
                               weight_decay=sched.weight_decay)
    return torch.optim.AdamW(params, lr=sched.base_lr, weight_decay=sched.weight_decay)


def training_fraction(step: int, total_steps: int, elapsed_s: float, budget_s: float | None) -> float:
    """How much of the run is done, in [0, 1]: the larger of the step and the time fraction."""
    f = step / max(total_steps, 1)
    if budget_s:
        f = max(f, elapsed_s / budget_s)
    return min(max(f, 0.0), 1.0)


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
