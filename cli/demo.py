"""`seg3d demo`: the whole pipeline on a phantom it generates itself, or on a dataset given by path."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import THREADS_HELP, guarded, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        data: Path | None = typer.Option(None, "--data", help="A dataset folder (nnU-Net v2 or MSD layout). "
                                            "Default: a phantom dataset seg3d generates."),
        output: Path = typer.Option(Path("demo_output"), "-o", "--output", help="Where everything is written."),
        minutes: float = typer.Option(6.0, "--minutes", help="Training budget in minutes (wall clock)."),
        preset: str = typer.Option("cpu", "--preset", help="Planner preset (cpu, 8gb, 24gb, 40gb, 80gb)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        workers: int | None = typer.Option(None, "--workers", "-w", help="Worker processes (default: all "
                                           "cores)."),
        threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    ) -> None:
        """Plan, train, predict held-out cases and evaluate them, end to end."""
        from contextlib import ExitStack

        from rich.table import Table

        from seg3d.core.device import set_threads
        from seg3d.demo import run_demo

        guarded(lambda: set_threads(threads))
        stack = ExitStack()

        def factory(name: str):
            return stack.enter_context(progress_bar(name))

        with stack:
            res = guarded(lambda: run_demo(output, data=data, minutes=minutes, preset=preset, workers=workers,
                                           progress_factory=factory, device=device))
        summary = res.evaluation.get("per_class", {}) if isinstance(res.evaluation, dict) else {}
        table = Table(title=f"Held-out Dice ({len(res.held_out_cases)} cases never seen in training)")
        for col in ("class", "mean Dice", "median Dice", "mean HD95 (mm)", "mean NSD"):
            table.add_column(col)
        for name, s in summary.items():
            table.add_row(str(name), *(_fmt(s.get(k)) for k in ("dice_mean", "dice_median", "hd95_mean", "nsd_mean")))
        fg = res.evaluation.get("foreground_mean", {}) if isinstance(res.evaluation, dict) else {}
        if fg:
            table.add_row("[bold]foreground mean[/]", _fmt(fg.get("dice")), "", _fmt(fg.get("hd95")), _fmt(fg.get("nsd")))
        out.print(table)
        times = ", ".join(f"{k} {v:.0f} s" for k, v in res.timings_s.items())
        out.print(f"time: {times} (total {sum(res.timings_s.values()) / 60:.1f} min)")
        out.print(f"report: {res.report_dir / 'report.md'}")
        out.print(f"model: {res.model_dir}   predictions: {res.predictions_dir}")


def _fmt(v) -> str:
    if v is None:
        return "-"
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return str(v)
