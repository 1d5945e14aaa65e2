"""`seg3d distill`: train one student network on a fold ensemble's (with TTA) soft output."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import console, guarded, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command(help="Distil one or more teacher model folders (every fold, mirroring TTA by default; several "
                      "folders are averaged) into one student network: an ordinary model folder STUDENT that "
                      "`seg3d predict`, `evaluate` and `summary` use like any other. The teacher's probabilities "
                      "are computed once per case and cached in STUDENT/distillation/ (resumable; delete it "
                      "when the student is final).")
    def distill(
        teachers: list[Path] = typer.Argument(..., help="Teacher model folder(s)."),
        output: Path = typer.Option(..., "-o", "--output", help="Student model folder to write."),
        folds: str = typer.Option("all-available", "--folds", "-f", help="Teacher folds: all-available or a "
                                  "list like 0,1,2."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring TTA for the teacher's targets."),
        arch: str | None = typer.Option(None, "--arch", help="Student architecture (unet, unetpp; default: "
                                        "the first teacher's)."),
        features_scale: float = typer.Option(1.0, "--features-scale", help="Student width: every stage's "
                                             "features times F (0.5 = a narrower, faster student)."),
        unlabelled: list[Path] = typer.Option([], "--unlabelled", "-u", help="Extra image folder without "
                                              "labels (repeatable): only the teacher's output is learned there."),
        temperature: float = typer.Option(1.0, "--temperature", "-T", help="KL temperature (T^2-scaled)."),
        alpha: float = typer.Option(0.5, "--alpha", help="Weight of the teacher's soft targets; 1-alpha "
                                    "goes to CE+Dice on the reference labels."),
        soft_loss: str = typer.Option("kl", "--soft-loss", help="kl (KL divergence at T) or dice (soft Dice)."),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (as seg3d train)."),
        iters_per_epoch: int | None = typer.Option(None, "--iters-per-epoch", min=1,
                                                   help="Iterations per epoch (as seg3d train)."),
        time_budget_min: float | None = typer.Option(None, "--time-budget-min", min=0.01,
                                                     help="Stop training after this many minutes (the teacher "
                                                          "targets are not counted)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (as seg3d train)."),
        optimizer: str | None = typer.Option(None, "--optimizer", help="sgd or adamw (default: the plan's)."),
        lr: float | None = typer.Option(None, "--lr", min=0.0, help="Base learning rate (default: the plan's)."),
        augmentation: str | None = typer.Option(None, "--augmentation", help="default, light or none "
                                                "(default: the plan's)."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Data-loading workers."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted distillation exactly."),
        dataset: Path | None = typer.Option(None, "--dataset", "-d", help="Labelled dataset (default: the one "
                                            "the teacher's plan records)."),
        top_k: int = typer.Option(4, "--top-k", min=2, help="Classes kept per voxel in the stored targets "
                                  "when the model has more than --max-dense-classes."),
        max_dense_classes: int = typer.Option(8, "--max-dense-classes", min=2, help="Up to this many classes "
                                              "the targets are stored whole (float16)."),
    ) -> None:
        """Distil a teacher ensemble into one student."""
        from seg3d.core.device import set_threads
        from seg3d.core.folds import parse_folds
        from seg3d.distill import DistillSettings
        from seg3d.distill import distill as run

        def settings():
            return DistillSettings(folds=parse_folds(folds), tta=tta, arch=arch, features_scale=features_scale,
                                   temperature=temperature, alpha=alpha, soft_loss=soft_loss, epochs=epochs,
                                   iters_per_epoch=iters_per_epoch, time_budget_min=time_budget_min,
                                   device=device, precision=precision, optimizer=optimizer, lr=lr,
                                   augmentation=augmentation, seed=seed, workers=workers, resume=resume,
                                   unlabelled=tuple(str(u) for u in unlabelled), top_k=top_k,
                                   max_dense_classes=max_dense_classes)

        s = guarded(settings)
        set_threads(None)
        with progress_bar("teacher targets") as tprog, progress_bar("student") as prog:
            res = guarded(lambda: run(teachers, output, s, dataset_dir=dataset, progress=prog,
                                      target_progress=tprog, log=lambda m: console.print(m, highlight=False)))
        for rec in res["unlabelled"]:
            for sk in rec["skipped"]:
                console.print(f"[yellow]skipped[/] {', '.join(sk['files'])}: {sk['reason']}", highlight=False)
        t = res["training"]
        out.print(f"student trained: {t['epochs']} epochs, {t['steps']} steps, {t['seconds']:.0f} s; "
                  f"{res['labelled_cases']} labelled + "
                  f"{sum(r['cases'] for r in res['unlabelled'])} unlabelled case(s); model in {res['student_dir']}",
                  highlight=False)
