"""`seg3d export`: a model folder as a portable bundle that `seg3d predict -m BUNDLE` runs."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import console, guarded, out


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def export(
        ctx: typer.Context,
        model_dir: Path = typer.Argument(..., help="A model folder written by `seg3d train`."),
        output: Path = typer.Option(..., "-o", "--output", help="The bundle folder to create (new or empty)."),
        fmt: str = typer.Option("openvino", "--format", help="openvino (OpenVINO IR) or onnx."),
        folds: list[str] | None = typer.Option(None, "--folds", "-f", help="Fold numbers, or all-available "
                                                  "(default). Repeat or list: --folds 0 1 2."),
        checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
    ) -> None:
        """Write a bundle: one network per fold (OpenVINO IR or ONNX) with the plan, preprocessing, patch,
        step, mirror axes, post-processing, labels, versions and checksums. Predict from it with
        `seg3d predict -m BUNDLE`: no checkpoints, no training code."""
        from seg3d.core.folds import parse_folds
        from seg3d.export import export_bundle

        fold_list = list(folds or []) + [a for a in ctx.args if a.isdigit()]
        stray = [a for a in ctx.args if not a.isdigit()]
        if stray:
            console.print(f"[bold red]error:[/] unexpected argument(s): {' '.join(stray)}")
            raise typer.Exit(2)

        def run():
            return export_bundle(model_dir, output, fmt=fmt, folds=parse_folds(fold_list or None),
                                 checkpoint=checkpoint, log=lambda s: console.print(s, highlight=False))

        bundle = guarded(run)
        m = bundle.manifest()
        out.print(f"bundle written: {bundle.path} ({m.format}, fold(s) {', '.join(m.folds)}, "
                  f"{len(m.files)} files)")
        out.print(f"predict with: seg3d predict -i INPUT -o OUTPUT -m {bundle.path}")
