"""The training loop: one fold of one configuration, from the plan folder to a model folder.

Defaults follow nnU-Net (SGD Nesterov lr 1e-2, momentum 0.99, weight decay 3e-5, poly decay 0.9, gradient
norm clipped at 12) with three differences that matter on real hardware: the schedule is driven by the
fraction of training done, so ``time_budget_min`` fits the whole poly curve into a wall-clock budget; the
latest checkpoint is written (atomically) every epoch, not every 50; and CPUs with native bf16 train under
bf16 autocast with channels-last-3d tensors (about twice the fp32 convolution throughput measured here).

Exact resume: batches are a pure function of (seed, epoch, iteration, rank) in the loader, weights, optimizer
moments, grad scaler and RNG states are in ``checkpoint_latest.pt``, and the schedule position (step, elapsed
seconds) too — a resumed run continues the same curve and, in fp32 on a CPU, reproduces the weights of an
uninterrupted run.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.progress import ProgressFn, report
from seg3d.training.distributed import DistInfo

DEFAULT_EPOCHS = 1000
DEFAULT_ITERS = 250
BUDGET_ITERS = 50  # iterations per epoch under a time budget: frequent checkpoints and pseudo-Dice
VAL_BATCHES = 4
EMA_KEEP = 0.9
CLIP_NORM = 12.0


def default_model_dir(plan_dir: str | Path, config_name: str, arch: str, loss: str) -> Path:
    """``PLAN_DIR/models/<config>_<arch>_<loss>``: one folder per trained variant, folds inside."""
    return Path(plan_dir) / "models" / f"{config_name}_{arch}_{loss}"


def resolve_dataset_dir(plan, plan_dir: Path, cache_dir: Path, dataset_dir: str | Path | None) -> Path:
    """The dataset the plan was made for: given, recorded in the plan, or recorded in an existing cache."""
    import json

    cands: list[Any] = [dataset_dir, plan.extra.get("dataset_dir")]
    manifest = cache_dir / "manifest.json"
    if manifest.is_file():
        try:
            cands.append(json.loads(manifest.read_text()).get("dataset_root"))
        except (OSError, ValueError):
            pass
    for c in cands:
        if c and (Path(c) / "dataset.json").is_file():
            return Path(c).resolve()
    if dataset_dir is not None:
        raise Seg3dError("not a dataset folder (no dataset.json)", dataset_dir)
    raise Seg3dError("the dataset folder of this plan is unknown (plans.json has no extra.dataset_dir and no "
                     "cache exists): pass it with --dataset", plan_dir / "plans.json")


def training_defaults(plan, optimizer: str | None, lr: float | None,
                      augmentation: str | None) -> tuple[str, float | None, str]:
    """Optimizer, learning rate and augmentation: as given, else the plan's preset defaults, else nnU-Net's."""
    d = plan.extra.get("training") or {}
    return (optimizer or d.get("optimizer") or "sgd", lr if lr is not None else d.get("lr"),
            augmentation or d.get("augmentation") or "default")


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_flops_line(net, config, in_channels: int) -> str:
    params = sum(p.numel() for p in net.parameters())
    line = f"network: {params / 1e6:.2f} M parameters"
    try:
        from seg3d.nets.flops import count_flops  # engineer D's counter (optional until it exists)

        line += f", {count_flops(net, (1, in_channels, *config.patch_size)) / 1e9:.1f} GFLOPs per patch (forward)"
    except (ImportError, AttributeError, TypeError):
        pass
    return line


def train(plan_dir: str | Path, config_name: str = "3d_fullres", fold: int | str = 0,
          model_dir: str | Path | None = None, arch: str = "unet", loss: str = "ce_dice",
          epochs: int | None = None, iters_per_epoch: int | None = None, time_budget_min: float | None = None,
          device: str = "auto", resume: bool = False, optimizer: str | None = None, seed: int = 0,
          num_workers: int | None = None, progress: ProgressFn | None = None,
          log: Callable[[str], None] = print, dataset_dir: str | Path | None = None, precision: str = "auto",
          val_batches: int = VAL_BATCHES, validate: bool = True, validation_tta: bool = True,
          cache_workers: int | None = None, lr: float | None = None, augmentation: str | None = None,
          compile_model: bool = False, batch_source: Callable[..., Any] | None = None,
          batch_loss: Callable[[Any, dict], Any] | None = None, model_info=None) -> dict[str, Any]:
    """Train one fold; returns a dict of results (epochs, steps, seconds, best EMA pseudo-Dice, validation).

    ``model_dir`` defaults to ``PLAN_DIR/models/<config>_<arch>_<loss>``. ``fold``: 0..K-1 or ``"all"``
    (every case, no held-out validation). ``epochs``/``iters_per_epoch`` default to nnU-Net's 1000 x 250;
    under ``time_budget_min`` the epochs are unlimited, an epoch is 50 iterations, and training stops at the
    budget with the learning rate decayed to ~0 there (the budget counts training and per-epoch validation,
    not building the cache or the end-of-fold validation). ``precision``: ``auto`` (fp16 AMP on CUDA, bf16
    on CPUs with native bf16, else fp32), ``fp32``, ``bf16``, ``fp16``. ``dataset_dir``: only needed when
    neither the plan nor an existing cache records it. ``optimizer`` (sgd | adamw), ``lr`` and ``augmentation``
    (see :data:`seg3d.data.AUGMENTATION_PRESETS`) default to the plan's preset (``extra["training"]``; the ``cpu``
    preset trains short runs with AdamW and light augmentation), else nnU-Net's SGD and augmentation.
    ``compile_model``: run the training forward through ``torch.compile`` (about 1 minute of compilation on
    2 CPU cores; on this AVX2 CPU the trainer's step gained only 2%, within noise; meant for long CUDA runs).

    Hooks for recipes built on this loop (``seg3d distill``): ``batch_source(cache, train_ids, plan, config,
    seed, rank, world_size)`` returns the training loader (anything with ``epoch(epoch)`` yielding dicts with at
    least ``"image"`` and ``"label"``; batches a pure function of seed, epoch and iteration keep resume exact);
    ``batch_loss(outputs, batch)`` replaces ``loss(outputs, batch["label"])`` for training steps (the per-epoch
    pseudo-validation keeps ``loss``); ``model_info`` is written as model.json instead of the default one.
    """
    import torch

    from seg3d.planning.plan import Plan
    from seg3d.training import distributed as dist_mod

    plan_dir = Path(plan_dir)
    plan = Plan.load(plan_dir)
    config = plan.config(config_name)
    optimizer, lr, augmentation = training_defaults(plan, optimizer, lr, augmentation)
    from seg3d.data import augmentation_preset
    from seg3d.inference.sliding_window import check_precision
    from seg3d.training.schedule import default_schedule

    # bad names and values fail here, before any work
    default_schedule(optimizer, lr)
    augmentation_preset(augmentation)
    check_precision(precision)
    if time_budget_min is not None and not time_budget_min > 0:
        raise Seg3dError(f"--time-budget-min must be > 0, got {time_budget_min}")
    if epochs is not None and epochs < 1 or iters_per_epoch is not None and iters_per_epoch < 1:
        raise Seg3dError("epochs and iterations per epoch must be >= 1")
    budget_s = None if time_budget_min is None else float(time_budget_min) * 60.0
    if epochs is None:
        epochs = DEFAULT_EPOCHS if budget_s is None else 10**9
    if iters_per_epoch is None:
        iters_per_epoch = DEFAULT_ITERS if budget_s is None else BUDGET_ITERS
    from seg3d.inference.predictor import resolve_device

    dev = resolve_device(device)
    info = dist_mod.init_distributed(dev.type)
    if dev.type == "cuda" and info.enabled:
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, info.world_size)))
    try:
        return _train(plan, plan_dir, config, config_name, fold, model_dir, arch, loss, epochs, iters_per_epoch,
                      budget_s, dev, info, resume, optimizer, seed, num_workers, progress, log, dataset_dir,
                      precision, val_batches, validate, validation_tta, cache_workers, lr, augmentation,
                      compile_model, batch_source, batch_loss, model_info)
    finally:
        dist_mod.shutdown(info)


def _train(plan, plan_dir, config, config_name, fold, model_dir, arch, loss, epochs, iters, budget_s, dev,
           info: DistInfo, resume, optimizer_name, seed, num_workers, progress, log, dataset_dir, precision,
           val_batches, validate, validation_tta, cache_workers, lr, augmentation,
           compile_model: bool = False, batch_source=None, batch_loss=None, model_info=None) -> dict[str, Any]:
    import torch

    from seg3d.inference.sliding_window import precision_warning, resolve_precision
    from seg3d.losses import build_loss
    from seg3d.model_dir import ModelInfo, fold_dir
    from seg3d.nets import build_network
    from seg3d.preprocessing.cache import CaseCache, build_cache
    from seg3d.training import checkpoint as ck
    from seg3d.training import distributed as dist_mod
    from seg3d.training.logging import EpochLog
    from seg3d.training.schedule import build_optimizer, default_schedule, set_lr, training_fraction
    from seg3d.training.splits import fold_cases, load_or_create_splits
    from seg3d.training.validation import confusion_counts, dice_from_counts, validate_fold

    if not info.is_main:
        log = lambda s: None  # noqa: E731 - rank 0 speaks for everyone
        progress = None
    fold = "all" if str(fold) == "all" else int(fold)
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir(plan_dir, config_name, arch, loss)
    fdir = fold_dir(model_dir, fold)
    cache_dir = plan_dir / "cache" / config_name
    dataset_dir = resolve_dataset_dir(plan, plan_dir, cache_dir, dataset_dir)

    # --- data: cache, splits ---------------------------------------------------------------------------
    if info.is_main:
        build_cache(dataset_dir, plan, config_name, cache_dir, workers=cache_workers)
    dist_mod.barrier(info)
    cache = CaseCache(cache_dir)
    case_ids = sorted(cache.case_ids)
    if info.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        plan.__class__.save(_with_dataset(plan, dataset_dir), model_dir / "plans.json")
        from seg3d import __version__ as version

        (model_info or ModelInfo(config=config_name, arch=arch, loss=loss, deep_supervision=True,
                                 seg3d_version=str(version))).save(model_dir)
    splits = load_or_create_splits(model_dir, case_ids, write=info.is_main) if fold != "all" or \
        (model_dir / "splits.json").is_file() or len(case_ids) >= 2 else [{"train": case_ids, "val": []}]
    train_ids, val_ids = fold_cases(splits, fold, case_ids)
    dist_mod.barrier(info)

    # --- network, loss, optimizer ----------------------------------------------------------------------
    _seed_everything(seed)
    net = build_network(config, plan.num_channels, plan.num_classes, arch=arch, deep_supervision=True).to(dev)
    amp = resolve_precision(precision, dev)
    warning = precision_warning(precision, dev)
    if warning and info.is_main:
        log(f"warning: {warning}")
    # channels-last-3d: faster on CUDA and under bf16, and ~15% faster in fp32 on this AVX2 CPU too (measured:
    # cpu-preset hippocampus step 0.95 s vs 1.13 s)
    channels_last = config.ndim == 3
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(loss, plan.num_classes, batch_dice=config.batch_dice)
    sched = default_schedule(optimizer_name, lr)
    opt = build_optimizer(net.parameters(), optimizer_name, sched)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16 and dev.type == "cuda"))

    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "ema": None, "best_ema": -math.inf, "best_epoch": None}
    latest = fdir / "checkpoint_latest.pt"
    if resume and latest.is_file():
        saved = ck.load_checkpoint(latest)
        for key, want in (("arch", arch), ("loss", loss), ("config", config_name), ("optimizer_name", optimizer_name)):
            if saved.get(key, want) != want:
                raise Seg3dError(f"cannot resume: the checkpoint was trained with {key} '{saved[key]}', not "
                                 f"'{want}'", latest)
        ck.unwrap(net).load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state.update(saved["state"])
        ck.set_rng_state(saved["rng"])
        if saved.get("budget_s") is not None and budget_s is not None and saved["budget_s"] != budget_s:
            log(f"note: the time budget changed from {saved['budget_s'] / 60:g} to {budget_s / 60:g} min; "
                "the schedule continues from the elapsed time")
        log(f"resuming fold {fold} from epoch {state['epoch']} (step {state['step']}, "
            f"{state['elapsed'] / 60:.1f} min trained)")
    elif resume:
        log(f"no checkpoint to resume in {fdir}; starting fold {fold} from scratch")
    model = dist_mod.wrap_ddp(net, info, dev)
    # torch.compile for the training forward only (validation and checkpoints use the plain module): fuses
    # InstanceNorm/LeakyReLU and the layout copies around them; its compile time is paid in the first step
    forward = torch.compile(model) if compile_model else model
    compile_pending = compile_model

    from seg3d.data import augmentation_preset, make_loader

    if batch_source is not None:
        loader = batch_source(cache, train_ids, plan, config, seed, info.rank, info.world_size)
    else:
        loader = make_loader(cache, train_ids, plan, config, batch_size=config.batch_size,
                             workers=num_workers or 0, augment=augmentation_preset(augmentation),
                             seed=seed, rank=info.rank, world_size=info.world_size)
    val_source = val_ids or train_ids
    val_data = _fixed_batches(make_loader(cache, val_source, plan, config, batch_size=config.batch_size,
                                          augment=None, workers=0, seed=seed + 7919), val_batches)

    log(f"training {arch} ({config_name}, loss {loss}, optimizer {optimizer_name} lr {sched.base_lr:g}, augmentation "
        f"{augmentation}) fold {fold}: "
        f"{len(train_ids)} training / {len(val_ids)} validation cases, patch {config.patch_size}, batch "
        f"{config.batch_size}, device {dev}{f' x{info.world_size} ranks' if info.enabled else ''}, precision "
        f"{_pname(amp)}{', channels-last' if channels_last else ''}{', torch.compile' if compile_model else ''}, "
        f"seed {seed}")
    log(_param_flops_line(net, config, plan.num_channels))
    log("schedule: " + (f"time budget {budget_s / 60:g} min (lr follows elapsed time), {iters} iterations/epoch"
                        if budget_s is not None else f"{epochs} epochs x {iters} iterations"))
    elog = EpochLog(fdir, resume_epochs=state["epoch"] if resume else 0) if info.is_main else None
    if info.is_main:
        fdir.mkdir(parents=True, exist_ok=True)

    total_steps = epochs * iters
    autocast = (lambda: torch.autocast(dev.type, dtype=amp)) if amp is not None else nullcontext
    stop = False
    fraction = training_fraction(state["step"], total_steps, state["elapsed"], budget_s)
    while state["epoch"] < epochs and fraction < 1.0 and not stop:
        epoch = state["epoch"]
        model.train()
        t_epoch = time.perf_counter()
        t_wait, losses, n_it = 0.0, [], 0
        batches = _epoch_batches(loader, epoch)
        for it in range(iters):
            elapsed = state["elapsed"] + (time.perf_counter() - t_epoch)
            elapsed = dist_mod.broadcast_float(elapsed, info)
            fraction = training_fraction(state["step"], total_steps, elapsed, budget_s)
            if fraction >= 1.0:
                stop = True
                break
            lr = sched.lr(fraction)
            set_lr(opt, lr)
            t0 = time.perf_counter()
            batch = next(batches)
            x = batch["image"].to(dev, non_blocking=True)
            y = batch["label"].to(dev, non_blocking=True)
            t_wait += time.perf_counter() - t0
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            opt.zero_grad(set_to_none=True)
            with autocast():
                if compile_pending:
                    forward, out = _compiled_or_eager(forward, model, x, log if info.is_main else _quiet)
                    compile_pending = False
                else:
                    out = forward(x)
            out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
            lval = batch_loss(out, batch) if batch_loss is not None else loss_fn(out, y)
            if not torch.isfinite(lval):
                raise Seg3dError(f"the training loss became {lval.item()} at epoch {epoch} iteration {it}; "
                                 "try --optimizer adamw or a lower learning rate, and check the data")
            scaler.scale(lval).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            scaler.step(opt)
            scaler.update()
            losses.append(float(lval.detach()))
            state["step"] += 1
            n_it += 1
            if budget_s is not None:
                report(progress, int(min(elapsed, budget_s)), int(budget_s), f"epoch {epoch} loss {losses[-1]:.3f}")
            else:
                report(progress, state["step"], total_steps, f"epoch {epoch} loss {losses[-1]:.3f}")
        _close(batches)
        if n_it == 0:
            break
        # --- per-epoch validation on the fixed patches -----------------------------------------------
        val_loss, counts = _pseudo_validation(net, val_data, loss_fn, dev, autocast, channels_last,
                                              plan.num_classes, confusion_counts)
        dice = dice_from_counts(counts)
        defined = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(defined)) if defined else 0.0
        state["ema"] = mean_dice if state["ema"] is None else EMA_KEEP * state["ema"] + (1 - EMA_KEEP) * mean_dice
        epoch_time = time.perf_counter() - t_epoch
        state["elapsed"] += epoch_time
        state["epoch"] = epoch + 1
        improved = state["ema"] > state["best_ema"]
        if improved:
            state["best_ema"], state["best_epoch"] = state["ema"], epoch
        if info.is_main:
            meta = {"arch": arch, "loss": loss, "config": config_name, "num_classes": plan.num_classes,
                    "plan": _with_dataset(plan, dataset_dir).to_dict(), "optimizer_name": optimizer_name,
                    "seed": seed, "fold": str(fold), "budget_s": budget_s, "epochs": epochs, "iters": iters}
            weights = ck.unwrap(net).state_dict()
            ck.save_checkpoint(latest, {**meta, "model": weights, "optimizer": opt.state_dict(),
                                        "scaler": scaler.state_dict(), "state": dict(state),
                                        "rng": ck.rng_state(), "schedule": sched.__dict__})
            if improved:
                ck.save_checkpoint(fdir / "checkpoint_best.pt", {**meta, "model": weights, "epoch": epoch,
                                                                 "ema_pseudo_dice": state["ema"]})
            names = [n for n, v in sorted(plan.labels.items(), key=lambda kv: kv[1]) if v != 0]
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                   **{f"dice_{n}": d for n, d in zip(names, dice)}, "mean_dice": mean_dice,
                   "ema_dice": state["ema"], "lr": lr, "epoch_time_s": epoch_time,
                   "data_wait": t_wait / epoch_time, "iterations": n_it, "elapsed_s": state["elapsed"],
                   "seed": seed}
            elog.append(row)
            elog.plot()
            log(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, pseudo-Dice "
                + " ".join(f"{d:.3f}" for d in dice) + f", EMA {state['ema']:.4f}{' (best)' if improved else ''},"
                f" lr {lr:.2e}, {epoch_time:.1f} s, data wait {100 * t_wait / epoch_time:.0f}%")
        fraction = training_fraction(state["step"], total_steps, state["elapsed"], budget_s)

    # --- finish ----------------------------------------------------------------------------------------
    result: dict[str, Any] = {"model_dir": str(model_dir), "fold": str(fold), "epochs": state["epoch"],
                              "steps": state["step"], "seconds": state["elapsed"], "best_ema": state["best_ema"],
                              "best_epoch": state["best_epoch"], "validation": None}
    if info.is_main:
        ck.save_checkpoint(fdir / "checkpoint_final.pt", {
            "model": ck.unwrap(net).state_dict(), "arch": arch, "loss": loss, "config": config_name,
            "num_classes": plan.num_classes, "plan": _with_dataset(plan, dataset_dir).to_dict(),
            "epoch": state["epoch"], "seed": seed, "fold": str(fold)})
        log(f"fold {fold} trained: {state['epoch']} epochs, {state['step']} steps, {state['elapsed'] / 60:.1f} min;"
            f" best EMA pseudo-Dice {state['best_ema']:.4f} (epoch {state['best_epoch']})")
        if validate and val_ids:
            result["validation"] = validate_fold(model_dir, fold, val_ids, dataset_dir, str(dev),
                                                 tta=validation_tta, log=log)
    dist_mod.barrier(info)
    return result


def _with_dataset(plan, dataset_dir: Path):
    """The plan, recording the dataset it was trained on (post-processing decisions read it back)."""
    from dataclasses import replace

    return replace(plan, extra={**plan.extra, "dataset_dir": str(dataset_dir)})


def _quiet(_: str) -> None:
    pass


def _compiled_or_eager(compiled, model, x, log: Callable[[str], None]):
    """The compiled model's first call, where compilation happens; if that fails, the plain model, warned."""
    t = time.perf_counter()
    try:
        out = compiled(x)
    except Exception as e:  # noqa: BLE001 - inductor failures vary (no C++ compiler, an unsupported op)
        log(f"warning: torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
            "training without it")
        return model, model(x)
    log(f"torch.compile: the first step, compilation included, took {time.perf_counter() - t:.0f} s")
    return compiled, out


def _pname(amp) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}[amp]


def _epoch_batches(loader, epoch: int):
    """An iterator over the loader's batches of ``epoch`` (batches are a function of seed, epoch, iteration)."""
    if hasattr(loader, "epoch"):
        return iter(loader.epoch(epoch))
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    return iter(loader)


def _close(batches) -> None:
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _fixed_batches(loader, n: int) -> list:
    """The same ``n`` validation batches every epoch (epoch 0 of a dedicated, unaugmented loader)."""
    it = _epoch_batches(loader, 0)
    out = [next(it) for _ in range(max(1, n))]
    _close(it)
    return out


def _pseudo_validation(net, batches, loss_fn, dev, autocast, channels_last, num_classes, confusion_counts):
    import torch

    net.eval()
    losses, counts = [], None
    with torch.no_grad():
        for b in batches:
            x, y = b["image"].to(dev), b["label"].to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast():
                out = net(x)
            out = out.float()
            losses.append(float(loss_fn(out, y)))
            c = confusion_counts(out, y, num_classes)
            counts = c if counts is None else counts + c
    net.train()
    return float(np.mean(losses)), counts
