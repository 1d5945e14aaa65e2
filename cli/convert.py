"""`seg3d convert dicom DIR -o DATASET`: labelled DICOM data into the nnU-Net v2 layout."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import console, guarded, out, progress_bar


def register(app: typer.Typer) -> None:
    convert = typer.Typer(help="Convert data into the nnU-Net v2 layout seg3d trains on.", no_args_is_help=True)
    app.add_typer(convert, name="convert")

    @convert.command("dicom")
    def dicom(
        input_dir: Path = typer.Argument(..., help="A folder tree of DICOM series, with DICOM-SEG labels where "
                                         "there are any (file names and layout do not matter)."),
        output_dir: Path = typer.Option(..., "-o", "--output", help="The new dataset folder (must be empty), "
                                        "e.g. Dataset501_MyCT."),
        name: str | None = typer.Option(None, "--name", help="dataset.json name (default: the folder's)."),
        series_filter: list[str] | None = typer.Option(None, "--series-filter", help="Keep only matching "
                                                       "series: modality=CT, description='*abdomen*', "
                                                       "min-slices=20 (repeatable; all must match)."),
    ) -> None:
        """Images from DICOM series, labels from the DICOM-SEGs that reference them (series without one go to
        imagesTs); the same reader as `seg3d predict`, so training and prediction see the same geometry."""
        from seg3d.io.dicom import SeriesFilter
        from seg3d.io.dicom_convert import convert_dicom

        def run():
            flt = SeriesFilter.parse(series_filter or [])
            with progress_bar("convert") as bar:
                return convert_dicom(input_dir, output_dir, dataset_name=name, series_filter=flt, progress=bar)

        res = guarded(run)
        out.print(f"{len(res.training)} labelled case(s) in imagesTr/labelsTr, {len(res.test)} unlabelled in "
                  f"imagesTs; labels {res.labels}; {len(res.skipped)} file(s) skipped (see conversion.json)")
        if res.failed:
            console.print(f"[bold red]{len(res.failed)} problem(s):[/]")
            for what, why in res.failed:
                console.print(f"  {what}: {why}", highlight=False, soft_wrap=True)
        out.print(f"dataset: {output_dir}")
        if res.failed:
            raise typer.Exit(1)
