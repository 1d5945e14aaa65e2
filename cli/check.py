"""`seg3d check`: every problem of a dataset at once, one line per problem, naming the file."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import guarded, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command(help="Check a dataset and report every problem at once, one line per problem naming the "
                      "file; exit status 1 if there is any.\n\n"
                      "Finds missing or corrupt files, missing labels or channels, duplicate cases, wrong "
                      "dimensionality, image/label size or geometry mismatches, channels on different grids, "
                      "NaN/Inf voxels, undeclared or non-integer label values and an invalid dataset.json; "
                      "imagesTs/ too (images only).")
    def check(
        dataset_dir: Path = typer.Argument(..., help="Dataset folder: nnU-Net v2 raw layout (dataset.json, "
                                           "imagesTr/, labelsTr/, optional imagesTs/) or Medical "
                                           "Segmentation Decathlon layout (dataset.json with 'training')."),
        workers: int | None = typer.Option(None, "--workers", "-w", min=0,
                                              help="Worker processes reading cases in parallel "
                                                   "(default: all cores; 0: none, read in this process)."),
    ) -> None:
        """Check a dataset and report every problem at once (exit status 1 if there is any)."""
        from rich.markup import escape

        from seg3d.io.checks import check_dataset
        from seg3d.io.layout import load_dataset

        with progress_bar("checking") as progress:
            found = guarded(lambda: check_dataset(dataset_dir, workers=workers, progress=progress))
        for p in found:
            where = escape(str(p.path)) + ": " if p.path is not None else ""
            mark = "[yellow]![/] warning: " if p.warning else "[red]✗[/] "
            out.print(f"{mark}[bold]{where}[/]{escape(p.message)}", highlight=False, soft_wrap=True)
        problems = [p for p in found if not p.warning]
        if problems:
            files = {p.path for p in problems if p.path is not None}
            out.print(f"[bold red]{len(problems)} problem(s)[/] in {len(files)} file(s) of "
                      f"{escape(str(dataset_dir))}", highlight=False)
            raise typer.Exit(1)
        ds = guarded(lambda: load_dataset(dataset_dir))
        labels = ", ".join(f"{v} {k}" for k, v in ds.labels.items())
        test = f", {len(ds.test_cases)} test case(s)" if ds.test_cases else ""
        warned = f" ({len(found)} warning(s) above)" if found else ""
        out.print(f"[bold green]OK[/]: {len(ds.cases)} cases{test}, {ds.num_channels} channel(s) "
                  f"({', '.join(ds.channel_names)}), labels {escape(labels)}{warned}", highlight=False)
