"""Learning-rate schedules driven by a *fraction of training done*, by epochs or by wall-clock budget.

Driving the poly decay with ``elapsed / budget`` instead of ``epoch / epochs`` makes the learning rate reach
~0 exactly when a time budget runs out; the fraction is stored in the checkpoint, so a resumed run continues
the same curve instead of restarting it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """``poly``: lr * (1 - f)^exponent. ``warmup_poly``: linear warm-up over ``warmup`` of the run first."""

    base_lr: float = 1e-2
    exponent: float = 0.9
    kind: str = "poly"  # poly | warmup_poly
    warmup: float = 0.0  # fraction of the run
    epochs: int | None = None  # stop after this many epochs (None: only the budget stops)
    budget_s: float | None = None  # stop at this much training time (None: only epochs stop)

    def fraction(self, epoch: int, iteration: int, iters_per_epoch: int, elapsed_s: float) -> float:
        """How much of the run is done, in [0, 1]: the larger of the epoch and the time fraction."""
        f = 0.0
        if self.epochs:
            f = max(f, (epoch + iteration / max(iters_per_epoch, 1)) / self.epochs)
        if self.budget_s:
            f = max(f, elapsed_s / self.budget_s)
        return min(max(f, 0.0), 1.0)

    def lr(self, fraction: float) -> float:
        f = min(max(fraction, 0.0), 1.0)
        if self.kind == "warmup_poly" and self.warmup > 0 and f < self.warmup:
            return self.base_lr * (f + 1e-3) / (self.warmup + 1e-3)
        return self.base_lr * (1.0 - f) ** self.exponent

    def done(self, epoch: int, elapsed_s: float) -> bool:
        """True when ``epoch`` completed epochs or ``elapsed_s`` seconds end the run."""
        return bool((self.epochs and epoch >= self.epochs) or (self.budget_s and elapsed_s >= self.budget_s))


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
