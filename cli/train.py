"""`seg3d train` (one fold, several in sequence, or all cases) and `seg3d preprocess` (build the cache)."""
from __future__ import annotations

from pathlib import Path

import typer
from seg3d.cli.common import deprecated, fold_values, guarded, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
                 help="Train a model from a plan folder (written by `seg3d plan`). Builds or reuses the "
                      "preprocessing cache in PLAN_DIR/cache/<config>, writes the model folder (default "
                      "PLAN_DIR/models/<config>_<arch>_<loss>): plans.json, model.json, splits.json, and per "
                      "fold checkpoints, log.csv, progress.png, validation/summary.json. Interruptible: "
                      "--resume continues from the last finished epoch. Several GPUs or machines: launch "
                      "with torchrun.")
    def train(
        ctx: typer.Context,
        plan_dir: Path = typer.Argument(..., help="Plan folder (plans.json)."),
        config: str = typer.Option("3d_fullres", "--config", "-c", help="Configuration: 3d_fullres, 3d_lowres, 2d."),
        folds: list[str] | None = typer.Option(None, "--folds", "-f", help="Fold 0..4 (default 0), 'all' (every "
                                               "case, no validation), or several trained in sequence: --folds 0 1 2 "
                                               "(or 0,1,2)."),
        fold_old: str | None = typer.Option(None, "--fold", hidden=True, help="Old spelling of --folds."),
        arch: str = typer.Option("unet", "--arch", help="unet or unetpp (UNet++)."),
        loss: str = typer.Option("ce_dice", "--loss", help="ce_dice, tversky or focal."),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default 1000, or unlimited "
                                          "under --time-budget-min)."),
        iters_per_epoch: int | None = typer.Option(None, "--iters-per-epoch", min=1,
                                                   help="Iterations per epoch (default 250; 50 under a budget)."),
        time_budget_min: float | None = typer.Option(None, "--time-budget-min", min=0.01,
                                                     help="Stop after this many minutes of training; the "
                                                          "learning rate decays to ~0 at the budget."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        precision: str = typer.Option("auto", "--precision", help="auto (fp16 AMP on CUDA, bf16 on CPUs with "
                                      "native bf16, else fp32), fp32, bf16 or fp16."),
        compile_model: bool = typer.Option(False, "--compile", help="torch.compile the training forward "
                                           "(~1 min of compilation; for long GPU runs, ~no gain on a CPU)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from fold_K/checkpoint_latest.pt."),
        optimizer: str | None = typer.Option(None, "--optimizer", help="sgd (Nesterov, poly) or adamw (warm-up). "
                                             "Default: the plan's preset (cpu: adamw), else sgd."),
        lr: float | None = typer.Option(None, "--lr", min=0.0, help="Base learning rate (default: the plan's "
                                        "preset, else 0.01 for sgd, 0.001 for adamw)."),
        augmentation: str | None = typer.Option(None, "--augmentation", help="default (nnU-Net's), light "
                                                "(mirroring + mild intensity; for runs of a few hundred "
                                                "iterations) or none. Default: the plan's preset, else default."),
        seed: int = typer.Option(0, "--seed", help="Random seed (recorded in the log and checkpoints)."),
        workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Data-loading workers."),
        dataset: Path | None = typer.Option(None, "--dataset", "-d", help="Raw dataset folder (default: the "
                                            "one the plan records)."),
        output: Path | None = typer.Option(None, "-o", "--output", help="Model folder (default "
                                           "PLAN_DIR/models/<config>_<arch>_<loss>)."),
        threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads per process (default: the "
                                           "cores this process may use, shared between torchrun's ranks)."),
    ) -> None:
        """Train one or more folds."""
        from seg3d.core.device import set_threads
        from seg3d.core.folds import parse_folds
        from seg3d.core.settings import TrainSettings
        from seg3d.training import train as run
        from seg3d.training.distributed import launcher_info

        given = fold_values(folds, ctx.args)
        if fold_old is not None:
            deprecated("--fold", "--folds")
            given.append(fold_old)
        folds = guarded(lambda: _training_folds(parse_folds(given or "0")))
        base = guarded(lambda: TrainSettings(config=config, fold=str(folds[0]), arch=arch, loss=loss, epochs=epochs,
                                             iters_per_epoch=iters_per_epoch, time_budget_min=time_budget_min,
                                             device=device, precision=precision, compile=compile_model,
                                             resume=resume, optimizer=optimizer, lr=lr, augmentation=augmentation,
                                             seed=seed, workers=workers or 0))
        guarded(lambda: set_threads(threads, share=launcher_info().world_size))  # ranks share the cores
        for f in folds:
            settings = base.with_(fold=str(f))
            with progress_bar(f"fold {f}") as progress:
                res = guarded(lambda s=settings, p=progress: run(plan_dir, s, model_dir=output, dataset_dir=dataset,
                                                                 progress=p))
            val = res.get("validation") or {}
            msg = f"fold {f}: {res['epochs']} epochs, {res['seconds']:.0f} s; model in {res['model_dir']}"
            if val.get("mean_foreground_dice") is not None:
                msg += f"; validation mean Dice {val['mean_foreground_dice']:.4f} over {val['n_cases']} case(s)"
            out.print(msg, highlight=False)

    @app.command(help="Build the preprocessing cache for a plan ahead of training (PLAN_DIR/cache/<config>): "
                      "crop, resample, normalize every training case. Reused while dataset and plan are unchanged.")
    def preprocess(
        plan_dir: Path = typer.Argument(..., help="Plan folder (plans.json)."),
        config: str = typer.Option("3d_fullres", "--config", "-c", help="Configuration to preprocess."),
        dataset: Path | None = typer.Option(None, "--dataset", "-d", help="Raw dataset folder (default: the "
                                            "one the plan records)."),
        workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Worker processes "
                                           "(default: all cores)."),
    ) -> None:
        """Preprocess a dataset for a configuration."""
        from seg3d.core.plan import Plan
        from seg3d.core.plan_folder import PlanFolder
        from seg3d.preprocessing import build_cache

        def go():
            folder = PlanFolder(plan_dir)
            plan = Plan.load(folder.plans_json)
            plan.config(config)
            ds = folder.dataset_dir(dataset, config)
            with progress_bar(f"preprocessing {config}") as progress:
                build_cache(ds, plan, config, folder.cache_dir(config), workers=workers, progress=progress)
            return folder.cache_dir(config)

        where = guarded(go)
        out.print(f"cache ready in {where}", highlight=False)


def _training_folds(folds) -> list[str]:
    from seg3d.errors import Seg3dError

    if isinstance(folds, str):  # all-available: a prediction notion, nothing is trained yet
        raise Seg3dError("--folds takes fold numbers or 'all' for training (all-available is for predict)")
    return folds
