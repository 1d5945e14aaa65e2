"""`seg3d download msd TASK -o DIR`: a Medical Segmentation Decathlon task, verified and in nnU-Net v2 layout."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import guarded, out, progress_bar

download_app = typer.Typer(help="Download public datasets, verified and converted to the nnU-Net v2 layout.",
                           no_args_is_help=True)


@download_app.command("msd")
def msd(
    task: str = typer.Argument(..., help="Task04_Hippocampus, Task04, 4 or hippocampus (Task01 … Task10)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder that receives DatasetNNN_Name/."),
    url: str = typer.Option(None, "--url", help="Another address (mirror) or a local .tar already downloaded."),
    md5: str = typer.Option(None, "--md5", help="Expected md5 of the archive at --url (default: the table's, "
                            "when --url is not given)."),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the .tar after conversion."),
) -> None:
    """Download, verify (md5), extract safely and convert an MSD task (4D images split into channel files)."""
    from seg3d.download import download_msd

    with progress_bar("download") as prog, progress_bar("convert") as conv:
        path = guarded(lambda: download_msd(task, output, url=url, md5=md5, keep_archive=keep_archive,
                                            progress=prog, convert_progress=conv))
    out.print(f"dataset: {path}")
    out.print(f"next: seg3d check {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(download_app, name="download")
