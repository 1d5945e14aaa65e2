"""``seg3d distill``: one student network trained to do the work of a fold ensemble with TTA.

Steps (each resumable):

1. the teachers (one or more model folders) are loaded as a :class:`TeacherEnsemble` (every available fold,
   mirroring TTA, by default);
2. the student's work folder ``STUDENT/distillation/`` is a plan folder: ``plans.json`` (the first teacher's
   plan, its features scaled by ``features_scale``), ``cache/<config>`` (the training cache of the teacher's
   dataset, built by the usual :func:`build_cache`), ``unlabelled/<i>`` (each ``--unlabelled`` folder,
   preprocessed, bad files skipped) and ``targets/`` (the teacher's probabilities, :mod:`.targets`);
3. the student is trained by the ordinary trainer (:func:`seg3d.training.train`, fold ``all``: every labelled
   and unlabelled case) with the distillation batches (:mod:`.data`) and loss (:mod:`.loss`) plugged into it;
4. the student folder is an ordinary model folder (``fold_all/checkpoint_final.pt``, ``plans.json``,
   ``model.json`` with the provenance, which names the teacher's ``splits.json``), so ``seg3d predict``,
   ``evaluate`` and ``summary`` use it unchanged. Post-processing is *inherited* from the first teacher
   (its ``postprocessing.json``, decided on the teacher's out-of-fold cases); the student trains on every
   case, so it has no held-out cases of its own to decide on.

``STUDENT/distillation/`` can be deleted once the student is final (it is only needed to ``--resume``).
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from seg3d.core.model_folder import ModelFolder, ModelInfo
from seg3d.distill.loss import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, check_distillation_values
from seg3d.distill.targets import MAX_DENSE_CLASSES, TOP_K, TargetStorage
from seg3d.errors import Seg3dError
from seg3d.progress import ProgressFn
from seg3d.training.trainer import Trainer

WORK = "distillation"


@dataclass(frozen=True)
class DistillSettings:
    """Everything ``seg3d distill`` decides; defaults in one place (see :mod:`seg3d.distill.loss` for T, alpha).

    Teacher: ``folds`` (``"all-available"`` or a list), ``tta``, ``step``, ``checkpoint``. Student: ``arch``
    (None: the first teacher's), ``features_scale`` (multiplies every stage's features; 1 = the teacher's),
    ``temperature``, ``alpha``, ``soft_loss`` (``kl`` | ``dice``). Training: as ``seg3d train`` (``epochs``,
    ``iters_per_epoch``, ``time_budget_min``, ``device``, ``precision``, ``optimizer``, ``lr``, ``augmentation``
    (None: the plan's preset), ``seed``, ``workers``, ``resume``). Targets: ``max_dense_classes``, ``top_k``.
    """

    folds: Any = "all-available"
    tta: bool = True
    step: float = 0.5
    checkpoint: str = "final"
    arch: str | None = None
    features_scale: float = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    soft_loss: str = "kl"
    epochs: int | None = None
    iters_per_epoch: int | None = None
    time_budget_min: float | None = None
    device: str = "auto"
    precision: str = "auto"
    optimizer: str | None = None
    lr: float | None = None
    augmentation: str | None = None
    seed: int = 0
    workers: int | None = None
    resume: bool = False
    unlabelled: tuple[str, ...] = field(default_factory=tuple)
    max_dense_classes: int = MAX_DENSE_CLASSES
    top_k: int = TOP_K

    def __post_init__(self):
        check_distillation_values(self.temperature, self.alpha, self.soft_loss)
        if not self.features_scale > 0:
            raise Seg3dError(f"--features-scale must be > 0, got {self.features_scale}")
        if not 0.0 < self.step <= 1.0:
            raise Seg3dError(f"step must be in (0, 1], got {self.step}")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise Seg3dError(f"--time-budget-min must be > 0, got {self.time_budget_min}")
        TargetStorage(self.max_dense_classes, self.top_k)


def student_plan(plan, config_name: str, features_scale: float):
    """The teacher's plan with every stage's features of ``config_name`` scaled (at least 4 each)."""
    cfg = plan.config(config_name)
    feats = tuple(max(4, round(f * features_scale)) for f in cfg.topology.features)
    cfg = replace(cfg, topology=replace(cfg.topology, features=feats))
    return replace(plan, configurations={**plan.configurations, config_name: cfg})


class DistillTrainer(Trainer):
    """The ordinary :class:`~seg3d.training.trainer.Trainer` (its steps, its loop) with the distillation batches
    and loss plugged in; its one addition: ``model.json`` carries the provenance (written with the folder)."""

    def __init__(self, *args, info: ModelInfo, batches_for, **kw):
        super().__init__(*args, **kw)
        self.info = info
        # batches depend on the rank of a torchrun launch, known only now
        self.custom_batches = batches_for(self.settings.seed, self.dist.rank, self.dist.world_size)

    def _prepare_data(self) -> None:
        super()._prepare_data()
        if self.dist.is_main:
            self.folder.save_info(replace(self.info, dataset_dir=str(self.dataset_dir)))


def distill(teachers: Sequence[str | Path], student_dir: str | Path, settings: DistillSettings = DistillSettings(),
            dataset_dir: str | Path | None = None, progress: ProgressFn | None = None,
            target_progress: ProgressFn | None = None, log=print) -> dict[str, Any]:
    """Distil ``teachers`` into a new model folder ``student_dir``; returns a summary dict.

    ``dataset_dir``: the labelled dataset (default: the one the first teacher's model.json records). Raises
    :class:`Seg3dError` for a bad teacher folder, bad settings, an unreadable dataset, or a student folder that
    holds a different model (use ``--resume`` to continue one).
    """
    from seg3d import __version__ as version
    from seg3d.core.plan_folder import PlanFolder
    from seg3d.core.settings import TrainSettings
    from seg3d.data import augmentation_preset
    from seg3d.distill.data import DistillSource, make_distill_loader
    from seg3d.distill.loss import DistillationLoss
    from seg3d.distill.targets import TeacherEnsemble, compute_targets
    from seg3d.distill.unlabelled import prepare_unlabelled
    from seg3d.preprocessing.cache import build_cache
    from seg3d.training.trainer import training_defaults

    s = settings
    student = ModelFolder(student_dir)
    teacher_dirs = [Path(t) for t in teachers]
    if any(student.path.resolve() == t.resolve() for t in teacher_dirs):
        raise Seg3dError("the student folder must not be a teacher folder", student.path)
    if student.checkpoint_path("all", "final").is_file() and not s.resume:
        raise Seg3dError("this folder already holds a distilled student; choose another -o (or --resume to "
                         "train it further)", student.path)
    ens = TeacherEnsemble(teacher_dirs, folds=s.folds, tta=s.tta, step=s.step, checkpoint=s.checkpoint,
                          device=s.device, precision=s.precision)
    first = ens.predictors[0]
    config_name, num_classes = ens.config_name, ens.num_classes

    # --- the work folder: a plan folder (plan, dataset record, cache), unlabelled caches, targets -------
    work = PlanFolder(student.path / WORK)
    work.path.mkdir(parents=True, exist_ok=True)
    given = dataset_dir if dataset_dir is not None else first.folder.dataset_dir()
    if given is None:
        raise Seg3dError("the teacher's model.json records no dataset: pass it with --dataset", first.model_dir)
    plan = student_plan(first.plan, config_name, s.features_scale)
    plan.save(work.plans_json)
    work.record_dataset(given)
    dataset_dir = work.dataset_dir(given)
    arch = s.arch or first.info.arch
    storage = TargetStorage(s.max_dense_classes, s.top_k)
    log(f"distilling {len(teacher_dirs)} teacher(s) into {student.path}: " + "; ".join(
        f"{p.model_dir} ({p.info.arch}, folds {','.join(p.folds)})" for p in ens.predictors) +
        f", TTA {'on' if s.tta else 'off'}")
    cache = build_cache(dataset_dir, plan, config_name, work.cache_dir(config_name), workers=s.workers)
    labelled = list(cache.case_ids)
    sources: dict[str, object] = {c: cache for c in labelled}
    unl_caches, records = prepare_unlabelled(s.unlabelled, plan, config_name, work.path / "unlabelled", log=log)
    sources.update(unl_caches)

    # --- teacher targets, once per case ------------------------------------------------------------------
    tstats = compute_targets(ens, sources, work.path / "targets", storage, progress=target_progress, log=log)

    # --- the student folder's files, then training on the trainer's steps -------------------------------
    student.path.mkdir(parents=True, exist_ok=True)
    inherited = first.folder.postprocessing_json.is_file()
    if inherited:
        shutil.copy2(first.folder.postprocessing_json, student.postprocessing_json)
    optimizer, lr, augmentation = training_defaults(plan, s.optimizer, s.lr, s.augmentation)
    provenance = {
        "method": "knowledge distillation (seg3d distill)",
        "teachers": ens.describe(), "tta": s.tta, "mirror_axes": list(first.mirror_axes), "step": s.step,
        "teacher_precision": s.precision, "temperature": s.temperature, "alpha": s.alpha,
        "soft_loss": s.soft_loss, "targets": storage.describe(num_classes),
        "student": {"arch": arch, "features": list(plan.config(config_name).topology.features),
                    "features_scale": s.features_scale},
        "data": {"dataset_dir": str(dataset_dir), "labelled_cases": len(labelled),
                 "teacher_splits": str(first.folder.splits_json) if first.folder.splits_json.is_file() else None,
                 "unlabelled": [r.to_dict() for r in records]},
        "postprocessing": (f"inherited from the teacher {first.model_dir.resolve()} (decided on its out-of-fold "
                           "cases)") if inherited else "none (the teacher has no postprocessing.json)",
        "training": {"optimizer": optimizer, "lr": lr, "augmentation": augmentation, "seed": s.seed,
                     "epochs": s.epochs, "iters_per_epoch": s.iters_per_epoch,
                     "time_budget_min": s.time_budget_min},
    }
    info = ModelInfo(config=config_name, arch=arch, loss=f"distill_{s.soft_loss}+ce_dice", deep_supervision=True,
                     seg3d_version=str(version), dataset_dir=str(dataset_dir), provenance=provenance)
    ens = first = None  # the teachers' networks are not needed while the student trains
    source = DistillSource(sources, set(labelled), work.path / "targets", num_classes)
    cfg = plan.config(config_name)
    aug = augmentation_preset(augmentation)

    def batches_for(seed: int, rank: int, world_size: int):
        return make_distill_loader(source, source.case_ids, cfg, augment=aug, workers=s.workers or 0, seed=seed,
                                   rank=rank, world_size=world_size)

    tsettings = TrainSettings(config=config_name, fold="all", arch=arch, loss="ce_dice", epochs=s.epochs,
                              iters_per_epoch=s.iters_per_epoch, time_budget_min=s.time_budget_min,
                              device=s.device, precision=s.precision, resume=s.resume, optimizer=optimizer,
                              lr=lr, augmentation=augmentation, seed=s.seed, workers=s.workers or 0,
                              validate=False, cache_workers=s.workers)
    loss = DistillationLoss(num_classes, s.temperature, s.alpha, s.soft_loss, batch_dice=cfg.batch_dice)
    trainer = DistillTrainer(work.path, tsettings, model_dir=student.path, dataset_dir=dataset_dir,
                             progress=progress, log=log, loss_fn=loss, info=info, batches_for=batches_for)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    return {"student_dir": str(student.path), "teacher_targets": tstats, "training": result,
            "labelled_cases": len(labelled), "unlabelled": [r.to_dict() for r in records],
            "settings": asdict(s)}
