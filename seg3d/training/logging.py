"""Training logs: ``log.csv`` (one row per epoch), ``progress.png`` and, if installed, TensorBoard.

The CSV is rewritten atomically each epoch (it is small), so it never holds half a row; on resume the rows
after the resumed epoch are dropped, so the file always describes the run the checkpoint continues.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from seg3d.atomic import write_text_atomic, write_with_atomic

# matplotlib and TensorBoard imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast


class EpochLog:
    """Rows of per-epoch numbers, kept in memory and mirrored to ``log.csv``."""

    def __init__(self, csv_path: Path, png_path: Path, tensorboard_dir: Path | None = None,
                 resume_epochs: int | None = None):
        """``csv_path`` / ``png_path`` / ``tensorboard_dir`` (``None``: no TensorBoard): see
        :meth:`seg3d.core.model_folder.ModelFolder.training_log` and its neighbours."""
        self.path = Path(csv_path)
        self.png = Path(png_path)
        self.rows: list[dict] = []
        if resume_epochs is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [dict(r) for r in csv.DictReader(f)][:resume_epochs]
        self._tb = _tensorboard(Path(tensorboard_dir)) if tensorboard_dir is not None else None

    def append(self, row: dict) -> None:
        self.rows.append(row)
        cols: list[str] = []
        for r in self.rows:
            cols += [c for c in r if c not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({c: _fmt(r.get(c, "")) for c in cols})
        write_text_atomic(self.path, buf.getvalue())
        if self._tb is not None:
            step = int(row.get("epoch", len(self.rows)))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def plot(self) -> None:
        plot_progress(self.rows, self.png)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed: optional
        return None
    return SummaryWriter(str(folder))


def _col(rows: list[dict], name: str) -> list[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(name, "nan")))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def plot_progress(rows: list[dict], path: Path) -> None:
    """Losses, pseudo-Dice (+ EMA), learning rate and data-wait share per epoch.

    matplotlib's object API (a Figure with its own Agg canvas): no pyplot, no process-wide backend switch.
    """
    if not rows:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = _col(rows, "epoch")
    fig = Figure(figsize=(9, 9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    a = axes[0]
    a.plot(ep, _col(rows, "train_loss"), label="train loss", color="tab:blue")
    a.plot(ep, _col(rows, "val_loss"), label="val loss", color="tab:red")
    a.set_ylabel("loss")
    a.legend(loc="upper right")
    b = a.twinx()
    for c in [c for c in rows[-1] if c.startswith("dice_")]:
        b.plot(ep, _col(rows, c), ls=":", label=c[5:])
    b.plot(ep, _col(rows, "ema_dice"), color="tab:green", lw=2, label="EMA pseudo-Dice")
    b.set_ylabel("pseudo-Dice")
    b.set_ylim(0, 1)
    b.legend(loc="lower right", fontsize="small")
    axes[1].plot(ep, _col(rows, "lr"), color="k")
    axes[1].set_ylabel("learning rate")
    axes[2].plot(ep, _col(rows, "epoch_time_s"), label="epoch time (s)")
    axes[2].set_ylabel("epoch time (s)")
    c = axes[2].twinx()
    c.plot(ep, [100 * v for v in _col(rows, "data_wait")], color="tab:orange", label="data wait (%)")
    c.set_ylabel("data wait (%)")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
