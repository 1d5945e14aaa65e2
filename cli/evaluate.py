"""`seg3d evaluate` (metrics, report, pictures) and `seg3d summary` (cross-validation overview of models)."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import console, deprecated, guarded, out, progress_bar


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def evaluate(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted label maps (<case>.nii.gz …)."),
    gt_dir: Path = typer.Argument(..., help="Folder of reference label maps with the same file names."),
    output: Path = typer.Option(..., "-o", "--output", help="Report folder (metrics.csv, metrics.json, "
                                "report.md, pictures/)."),
    dataset_json: Path = typer.Option(None, "--dataset-json", help="nnU-Net v2 or MSD dataset.json naming the "
                                      "labels (default: GT_DIR/../dataset.json if present, else values found)."),
    tolerance_mm: float = typer.Option(1.0, "--tolerance-mm", help="Surface Dice tolerance in mm."),
    pictures: int = typer.Option(10, "--pictures", help="Montages for the N cases with the lowest foreground "
                                 "Dice (0: no pictures, -1: every case)."),
    images_dir: Path = typer.Option(None, "--images-dir", help="Images to draw under the contours "
                                    "(<case>_0000.nii.gz); default: the reference itself."),
    workers: int = typer.Option(None, "--workers", "-w", help="Parallel processes (default: up to 4)."),
    model_dir: Path = typer.Option(None, "-m", "--model", help="The model that made the predictions: the "
                                   "report links its training curves (fold_*/progress.png)."),
    model_dir_old: Path = typer.Option(None, "--model-dir", hidden=True, help="Old spelling of --model."),
) -> None:
    """Dice, IoU, HD95 (mm), surface Dice and volumes per case and class, with a report and pictures."""
    from rich.table import Table

    from seg3d.evaluation import evaluate_folder

    if model_dir_old is not None:
        deprecated("--model-dir", "-m/--model")
        model_dir = model_dir or model_dir_old

    with progress_bar("evaluate") as prog:
        res = guarded(lambda: evaluate_folder(pred_dir, gt_dir, output, dataset_json=dataset_json,
                                              tolerance_mm=tolerance_mm, images_dir=images_dir,
                                              pictures=pictures, workers=workers, progress=prog,
                                              model_dir=model_dir))
    table = Table(title=f"{res['num_cases']} case(s); surface Dice at {tolerance_mm:g} mm")
    for col in ("class", "Dice mean ± std", "Dice median", "IoU", "HD95 mm", "NSD", "missed", "false pos."):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, c in res["per_class"].items():
        table.add_row(name, f"{_fmt(c['dice_mean'])} ± {_fmt(c['dice_std'])}", _fmt(c["dice_median"]),
                      _fmt(c["iou_mean"]), _fmt(c["hd95_mean"], 2), _fmt(c["nsd_mean"]), str(c["n_pred_empty"]),
                      str(c["n_ref_empty"]))
    fg = res["foreground_mean"]
    table.add_row("[bold]foreground mean[/]", _fmt(fg["dice"]), "", _fmt(fg["iou"]), _fmt(fg["hd95"], 2),
                  _fmt(fg["nsd"]), "", "")
    out.print(table)
    if res["missing_predictions"]:
        ids = res["missing_predictions"]
        console.print(f"[yellow]warning:[/] {len(ids)} reference case(s) have no prediction (not in the "
                      f"statistics): {', '.join(ids[:10])}{' …' if len(ids) > 10 else ''}", highlight=False)
    if res["unexpected_labels"]:
        console.print(f"[yellow]warning:[/] {len(res['unexpected_labels'])} case(s) hold undeclared label "
                      "values (see the report)", highlight=False)
    out.print(f"report: {Path(output) / 'report.md'}")


def summary(
    ctx: typer.Context,
    models: list[Path] = typer.Option(None, "-m", "--model", help="A trained model folder (with fold_K/); "
                                      "repeat to compare several (other configurations or architectures)."),
    output: Path = typer.Option(None, "-o", "--output", help="Also write summary.md and summary.json here."),
    models_old: list[Path] = typer.Option(None, "--models", hidden=True, help="Old spelling of -m/--model."),
) -> None:
    """Cross-validation Dice per fold and class, post-processing, training time; which model to use."""
    from rich.table import Table

    from seg3d.evaluation.summary import summarize_models, write_summary

    old_args = [Path(a) for a in ctx.args]  # the previous release took the model folder as an argument
    if old_args:
        deprecated("the model folder as an argument", "-m/--model MODEL_DIR")
    if models_old:
        deprecated("--models", "-m/--model (repeated)")
    dirs = [*old_args, *(models or []), *(models_old or [])]
    if not dirs:
        console.print("[bold red]error:[/] give the model folder(s) with -m/--model")
        raise typer.Exit(2)
    res = guarded(lambda: summarize_models(dirs))
    for m in res["models"]:
        table = Table(title=f"{m['name']} ({m['model_dir']})")
        classes = m["classes"]
        for col in ("fold", *classes, "mean", "epochs", "training time"):
            table.add_column(col, justify="left" if col == "fold" else "right")
        for f in m["folds"]:
            hours = f.get("training_time_s")
            table.add_row(str(f["fold"]), *(_fmt(f["dice"].get(c)) for c in classes), _fmt(f.get("mean_dice")),
                          str(f.get("epochs") if f.get("epochs") is not None else "–"),
                          "–" if hours is None else f"{hours / 60:.1f} min")
        cv = m["cv"]
        table.add_row("[bold]CV[/]", *(_fmt(cv["dice"].get(c)) for c in classes), _fmt(cv.get("mean_dice")),
                      "", "")
        if m.get("postprocessing"):
            table.add_row("post-proc.", *(str(m["postprocessing"].get(c, "–")).split(" ")[0] for c in classes),
                          "", "", "")
        out.print(table)
        for note in m["notes"]:
            out.print(f"[yellow]note:[/] {note}", highlight=False)
    for line in res["recommendation"]:
        out.print(line)
    if output is not None:
        paths = guarded(lambda: write_summary(res, output))
        out.print(f"written: {', '.join(str(p) for p in paths)}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("summary", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(summary)
