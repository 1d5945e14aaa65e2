"""`seg3d predict` (a folder of cases) and `seg3d decide-postprocessing` (from cross-validation)."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import THREADS_HELP, console, fold_values, guarded, out, progress_bar

FAST_STEP = 0.75  # --fast: no mirroring and fewer overlapping windows (Dice cost in benchmarks/RESULTS.md)


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def predict(
        ctx: typer.Context,
        input_dir: Path = typer.Option(..., "-i", "--input", help="Folder of images: <case>_0000.nii.gz ... "
                                       "(or <case>.nii.gz for one-channel models), and/or a folder tree of "
                                       "DICOM series (found recursively; see data/README.md)."),
        output_dir: Path = typer.Option(..., "-o", "--output", help="Where the masks <case>.nii.gz go."),
        model_dir: Path = typer.Option(..., "-m", "--model", help="A model folder written by `seg3d train`, or "
                                       "a bundle written by `seg3d export`."),
        config: str | None = typer.Option(None, "--config", help="Configuration (default: the model's)."),
        folds: list[str] | None = typer.Option(None, "--folds", "-f", help="Fold numbers, or all-available "
                                                  "(default). Repeat or list: --folds 0 1 2."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring test-time augmentation."),
        step: float = typer.Option(0.5, "--step", help="Window step as a fraction of the patch (0.5 = half "
                                   "overlapping; larger is faster)."),
        fast: bool = typer.Option(False, "--fast", help=f"No TTA and step {FAST_STEP}: several times faster, "
                                  "slightly lower Dice."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, bf16 on CPUs with native "
                                      "bf16, else fp32; fp32 with OpenVINO), fp32, bf16, fp16, or int8 (--backend "
                                      "openvino: quantized with NNCF on the fold's training cases on first use, "
                                      "then cached)."),
        save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write "
                                                "<case>.npz with float16 class probabilities."),
        postprocess: bool = typer.Option(True, "--postprocess/--no-postprocess", help="Apply the "
                                         "post-processing the model's cross-validation accepted."),
        continue_: bool = typer.Option(False, "--continue", help="Skip cases whose output already exists "
                                       "and is complete."),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the sorted case list into N parts ..."),
        part_id: int = typer.Option(0, "--part-id", help="... and predict part K (0-based)."),
        checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
        backend: str = typer.Option("auto", "--backend", help="Inference runtime: auto (torch on CUDA; on the CPU "
                                    "OpenVINO when installed, else torch), torch or openvino."),
        output_formats: list[str] | None = typer.Option(None, "--output-format", help="Mask format: nifti, nrrd, "
                                                        "mha or dicom-seg; repeat for several. Default: the "
                                                        "input's format (DICOM series: nifti and dicom-seg)."),
        threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
        statistics: bool = typer.Option(False, "--statistics", help="Per-structure volume, intensity, "
                                        "bounding box, centroid (LPS) and components: statistics/<case>.json "
                                        "and statistics.csv."),
        preview: bool = typer.Option(False, "--preview", help="previews/<case>.png: three slices, mask over "
                                     "image, legend."),
        series_filter: list[str] | None = typer.Option(None, "--series-filter", help="Which DICOM series: "
                                                       "modality=CT, description='*abdomen*', min-slices=20 "
                                                       "(repeatable; all must match)."),
        engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (a Ray cluster: "
                                   "cases go to free workers; needs seg3d\\[ray] and storage every node sees)."),
        ray_address: str | None = typer.Option(None, "--ray-address", help="auto or HOST:PORT of a running "
                                               "Ray cluster to join (default: start one on this machine)."),
        workers: int | None = typer.Option(None, "--workers", help="Ray workers in all (default: as many as "
                                           "the cluster's GPUs and CPUs hold)."),
        gpus_per_worker: float = typer.Option(1.0, "--gpus-per-worker", help="GPUs per GPU worker (0.5: two "
                                              "per GPU); the CPUs left get CPU workers."),
        cpus_per_worker: int | None = typer.Option(None, "--cpus-per-worker", help="CPUs (and threads) per "
                                                   "Ray worker (default: 4, or a node's CPUs if fewer)."),
    ) -> None:
        """Segment every case in a folder; outputs carry each input's exact header."""
        from seg3d.core.device import set_threads
        from seg3d.core.settings import PredictSettings
        from seg3d.runners.local import predict_folder

        fold_list = fold_values(folds, ctx.args)
        if fast:
            tta, step = False, max(step, FAST_STEP)

        settings = guarded(lambda: PredictSettings(
            folds=fold_list or "all-available", tta=tta, step=step, device=device, precision=precision,
            checkpoint=checkpoint, postprocess=postprocess, save_probabilities=save_probabilities,
            continue_=continue_, num_parts=num_parts, part_id=part_id, config=config, backend=backend,
            output_formats=tuple(output_formats or ()), statistics=statistics, preview=preview,
            series_filter=tuple(series_filter or ())))
        guarded(lambda: set_threads(threads))
        ray_settings = guarded(lambda: _ray_settings(engine, ray_address, workers, gpus_per_worker,
                                                     cpus_per_worker))

        def run():
            with progress_bar("predict") as bar:
                if ray_settings is None:
                    return predict_folder(input_dir, output_dir, model_dir, settings, progress=bar)
                from seg3d.runners.ray import predict_folder_ray

                return predict_folder_ray(input_dir, output_dir, model_dir, settings, ray_settings, progress=bar)

        summary = guarded(run)
        _print_summary(summary)
        if summary["failed"] or summary.get("manifest_note"):
            raise typer.Exit(1)

    @app.command("decide-postprocessing")
    def decide(
        model_dir: Path = typer.Option(..., "-m", "--model", help="A model folder with fold_K/validation/."),
        workers: int = typer.Option(2, "--workers", "-w", min=0, help="Worker processes scoring the cases."),
        dataset_dir: Path | None = typer.Option(None, "-d", "--dataset", help="The dataset folder with "
                                                   "the reference labels (default: the one in the plan)."),
        fraction: float = typer.Option(1 / 3, "--fraction", help="Drop components smaller than this "
                                       "fraction of the class's largest."),
        min_volume: float = typer.Option(0.0, "--min-volume-mm3", help="Also drop components below this "
                                         "volume."),
    ) -> None:
        """Decide per class, on cross-validation predictions, whether the component rule improves Dice."""
        from rich.table import Table

        from seg3d.postprocessing import decide_postprocessing

        def run():
            with progress_bar("decide") as bar:
                return decide_postprocessing(model_dir, dataset_dir, fraction, min_volume, workers=workers,
                                             progress=bar)

        rule = guarded(run)
        table = Table(title="Post-processing on cross-validation (mean Dice)")
        for col in ("label", "without", "with", "applied"):
            table.add_column(col)
        for v, ev in rule.evidence.items():
            table.add_row(v, f"{ev['dice_before']:.4f}", f"{ev['dice_after']:.4f}",
                          "yes" if int(v) in rule.classes else "no")
        out.print(table)
        from seg3d.core.model_folder import ModelFolder

        out.print(f"written: {ModelFolder(model_dir).postprocessing_json}")


SHOWN_PER_REASON = 10  # skipped files listed by name per reason; the manifest lists all
def _ray_settings(engine: str, address: str | None, workers: int | None, gpus_per_worker: float,
                  cpus_per_worker: int | None):
    """``None`` for the local engine; the Ray engine's settings (its options are refused without it)."""
    from seg3d.core.settings import RaySettings
    from seg3d.errors import Seg3dError

    if engine == "local":
        if address is not None or workers is not None or cpus_per_worker is not None or gpus_per_worker != 1.0:
            raise Seg3dError("--ray-address, --workers, --gpus-per-worker and --cpus-per-worker need --engine ray")
        return None
    if engine != "ray":
        raise Seg3dError(f"--engine takes local or ray, got '{engine}'")
    return RaySettings(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker)


def _print_summary(summary: dict) -> None:
    """Cases first, then every input file: predicted + skipped + failed = the files of the input folder."""
    from rich.markup import escape

    s = summary
    spc = s.get("seconds_per_case")
    rate = f", {spc:.2f} s/case" if spc else ""
    out.print(f"predicted {s['predicted']}, skipped {s['skipped']} (already complete), failed "
              f"{len(s['failed'])} of {s['total']} case(s) in {s['seconds']:.1f} s{rate}")
    c = s.get("input_counts")
    if c:
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(c["skipped_by_reason"].items()))
        out.print(f"{c['files']} input file(s) in {escape(str(s['input_dir']))}: {c['predicted']} predicted, "
                  f"{c['skipped']} skipped" + (f" ({skipped})" if skipped else "") + f", {c['failed']} failed",
                  highlight=False, soft_wrap=True)
        shown: dict[str, int] = {}
        for i in s["inputs"]:
            if i["status"] != "skipped" or i["kind"] == "already complete":
                continue
            shown[i["kind"]] = shown.get(i["kind"], 0) + 1
            if shown[i["kind"]] <= SHOWN_PER_REASON:
                console.print(f"  skipped {escape(i['file'])}: {escape(i['reason'])}", highlight=False,
                              soft_wrap=True)
        for kind, n in shown.items():
            if n > SHOWN_PER_REASON:
                console.print(f"  ... and {n - SHOWN_PER_REASON} more skipped ({kind}), listed in the manifest")
    if s["failed"]:
        console.print(f"[bold red]{len(s['failed'])} input(s) could not be predicted:[/]")
        for f in s["failed"]:
            console.print(f"  {escape(f['error'])}", highlight=False, soft_wrap=True)
    if s.get("manifest_note"):
        console.print(escape(s["manifest_note"]), highlight=False, soft_wrap=True)
    else:
        out.print(f"manifest: {escape(str(s['manifest']))}", highlight=False)
