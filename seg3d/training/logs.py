"""Training logs: ``log.csv`` (one row per epoch), ``progress.png``, optional TensorBoard.

The whole CSV is rewritten atomically each epoch from the rows kept in the checkpoint, so a resumed run's
log continues exactly where the checkpoint is, without rows from a lost epoch.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from seg3d.atomic import write_text_atomic, write_with_atomic

BASE_COLUMNS = ("epoch", "train_loss", "val_loss", "pseudo_dice_mean", "ema_pseudo_dice", "lr", "epoch_time_s",
                "elapsed_s", "data_wait_share", "iterations")


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    cols = list(BASE_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in cols})
    write_text_atomic(path, buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def plot_progress(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Losses, pseudo-Dice (per class and EMA), learning rate and data-wait share against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    ax.plot(ep, [r.get("val_loss", math.nan) for r in rows], label="val loss")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax2 = ax.twinx()
    for k in sorted(k for k in rows[-1] if k.startswith("dice_")):
        ax2.plot(ep, [r.get(k, math.nan) for r in rows], ":", label=k)
    ax2.plot(ep, [r.get("ema_pseudo_dice", math.nan) for r in rows], "k-", lw=2, label="EMA pseudo-Dice")
    ax2.set_ylabel("pseudo-Dice")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right", fontsize=7)
    axes[1].plot(ep, [r["lr"] for r in rows])
    axes[1].set_ylabel("learning rate")
    axes[2].plot(ep, [r["epoch_time_s"] for r in rows], label="epoch time (s)")
    axes[2].set_ylabel("epoch time (s)")
    ax3 = axes[2].twinx()
    ax3.plot(ep, [r["data_wait_share"] for r in rows], "r--", label="data-wait share")
    ax3.set_ylabel("data-wait share")
    ax3.set_ylim(0, 1)
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


class TensorBoard:
    """Scalars to TensorBoard when it is installed; silently nothing otherwise."""

    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except ImportError:
                self.writer = None

    def add(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
