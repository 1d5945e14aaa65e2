"""Typed settings of training and prediction: the CLI builds them, the Python API accepts them.

Defaults live here and nowhere else. Every check a user's value can fail happens in ``__post_init__`` and
raises :class:`seg3d.errors.Seg3dError` naming the value, before any work. Other issues append fields
(backend, output formats, statistics, preview, series filter); append, never reorder.

>>> TrainSettings(fold="0", epochs=10, device="cpu")       # doctest: +SKIP
>>> PredictSettings(folds=("0", "1"), tta=False)           # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from seg3d.core.device import PREDICT_PRECISIONS, check_precision
from seg3d.core.folds import ALL_AVAILABLE, parse_folds
from seg3d.core.model_folder import check_checkpoint_kind
from seg3d.errors import Seg3dError

CONFIG_NAMES = ("3d_fullres", "3d_lowres", "2d")
DEFAULT_EPOCHS = 1000  # nnU-Net's 1000 epochs x 250 iterations
DEFAULT_ITERS = 250
BUDGET_ITERS = 50  # iterations per epoch under a time budget: frequent checkpoints and pseudo-Dice
VAL_BATCHES = 4


@dataclass(frozen=True)
class TrainSettings:
    """How to train one fold (``seg3d train``; :func:`seg3d.training.train`).

    Attributes:
        config: configuration of the plan: ``3d_fullres``, ``3d_lowres`` or ``2d``.
        fold: ``"0"``..``"K-1"`` or ``"all"`` (every case, no held-out validation).
        arch: architecture name (:data:`seg3d.nets.ARCHITECTURES`).
        loss: loss name (:data:`seg3d.losses.LOSSES`).
        epochs / iters_per_epoch: ``None``: nnU-Net's 1000 x 250; under ``time_budget_min`` unlimited x 50.
        time_budget_min: stop after this many minutes of training (lr decays to ~0 there); ``None``: no budget.
        device: ``auto``, ``cpu`` or ``cuda[:N]``. precision: ``auto``, ``fp32``, ``bf16``, ``fp16``.
        resume: continue from ``fold_K/checkpoint_latest.pt``.
        optimizer / lr / augmentation: ``None``: the plan's :class:`~seg3d.core.plan.TrainingDefaults`,
            else nnU-Net's SGD and augmentation.
        compile: ``torch.compile`` the training forward (validation and checkpoints keep the plain module).
        seed: random seed (batches are a function of seed, epoch, iteration and rank).
        workers: data-loading worker processes (0: in the training process).
        validate: predict the held-out cases at the end of the fold; validation_tta: with mirroring.
        val_batches: fixed validation patches per epoch for the pseudo-Dice (batches of the plan's size).
        cache_workers: processes building the preprocessing cache (``None``: all cores).
    """

    config: str = "3d_fullres"
    fold: str = "0"
    arch: str = "unet"
    loss: str = "ce_dice"
    epochs: int | None = None
    iters_per_epoch: int | None = None
    time_budget_min: float | None = None
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    optimizer: str | None = None
    lr: float | None = None
    augmentation: str | None = None
    compile: bool = False
    seed: int = 0
    workers: int = 0
    validate: bool = True
    validation_tta: bool = True
    val_batches: int = VAL_BATCHES
    cache_workers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fold", _one_fold(self.fold))
        check_precision(self.precision)
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise Seg3dError(f"--time-budget-min must be > 0, got {self.time_budget_min}")
        if self.epochs is not None and self.epochs < 1 or \
                self.iters_per_epoch is not None and self.iters_per_epoch < 1:
            raise Seg3dError("epochs and iterations per epoch must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise Seg3dError(f"the learning rate must be > 0, got {self.lr}")
        if self.workers < 0 or self.val_batches < 1:
            raise Seg3dError(f"workers must be >= 0 and val_batches >= 1 (got {self.workers}, {self.val_batches})")

    @property
    def budget_s(self) -> float | None:
        return None if self.time_budget_min is None else float(self.time_budget_min) * 60.0

    @property
    def total_epochs(self) -> int:
        """Epochs to run: as given, else 1000, else (under a time budget) unlimited."""
        if self.epochs is not None:
            return self.epochs
        return DEFAULT_EPOCHS if self.budget_s is None else 10**9

    @property
    def iterations(self) -> int:
        """Iterations per epoch: as given, else 250, else (under a time budget) 50."""
        if self.iters_per_epoch is not None:
            return self.iters_per_epoch
        return DEFAULT_ITERS if self.budget_s is None else BUDGET_ITERS

    def with_(self, **changes: Any) -> TrainSettings:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class PredictSettings:
    """How to predict (``seg3d predict``; :class:`seg3d.inference.Predictor`, the batch runners).

    Attributes:
        folds: ``"all-available"`` or fold names (anything :func:`seg3d.core.folds.parse_folds` accepts).
        tta: mirroring test-time augmentation over the plan's mirror axes.
        step: window step as a fraction of the patch, in (0, 1] (0.5 = half-overlapping).
        device / precision: as in :class:`TrainSettings`; prediction also offers ``int8`` with the OpenVINO
            backend (:mod:`seg3d.inference.backends.openvino_int8`).
        checkpoint: ``final``, ``best`` or ``latest``.
        postprocess: apply the connected-component rule the model's cross-validation accepted.
        save_probabilities: also write ``<case>.npz`` (float16 probabilities, input grid).
        continue_: skip cases whose output exists and is complete.
        num_parts / part_id: predict part ``part_id`` of the sorted case list split in ``num_parts``.
        config: configuration (``None``: the model's).
        backend: inference runtime: ``auto`` (torch on CUDA; OpenVINO on the CPU when installed, else torch),
            ``torch`` or ``openvino`` (:data:`seg3d.inference.backends.BACKENDS`).
        output_formats: mask formats to write (``nifti``, ``nrrd``, ``mha``, ``dicom-seg``;
            :data:`seg3d.io.writers.WRITERS`); empty: the input's own format and file ending (a DICOM series:
            NIfTI and DICOM-SEG).
        statistics: write ``statistics/<case>.json`` per case and ``statistics.csv`` for the run.
        preview: write ``previews/<case>.png`` per case.
        series_filter: which DICOM series to predict (``modality=CT``, ``description=*abd*``, ``min-slices=20``;
            all must match; :class:`seg3d.io.dicom.SeriesFilter`).
    """

    folds: str | tuple[str, ...] = ALL_AVAILABLE
    tta: bool = True
    step: float = 0.5
    device: str = "auto"
    precision: str = "auto"
    checkpoint: str = "final"
    postprocess: bool = True
    save_probabilities: bool = False
    continue_: bool = False
    num_parts: int = 1
    part_id: int = 0
    config: str | None = None
    backend: str = "auto"
    output_formats: tuple[str, ...] = ()
    statistics: bool = False
    preview: bool = False
    series_filter: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        folds = parse_folds(self.folds)
        object.__setattr__(self, "folds", folds if folds == ALL_AVAILABLE else tuple(folds))
        object.__setattr__(self, "output_formats", tuple(dict.fromkeys(self.output_formats)))
        object.__setattr__(self, "series_filter", tuple(self.series_filter))
        if not 0.0 < float(self.step) <= 1.0:
            raise Seg3dError(f"step must be in (0, 1], got {self.step}")
        object.__setattr__(self, "step", float(self.step))
        check_precision(self.precision, PREDICT_PRECISIONS)
        check_checkpoint_kind(self.checkpoint)
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise Seg3dError(f"--part-id must be in 0..{self.num_parts - 1} and --num-parts >= 1 "
                             f"(got part {self.part_id} of {self.num_parts})")
        if self.config is not None and self.config not in CONFIG_NAMES:
            raise Seg3dError(f"unknown configuration '{self.config}' (choose from {', '.join(CONFIG_NAMES)})")

    def with_(self, **changes: Any) -> PredictSettings:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)



@dataclass(frozen=True)
class RaySettings:
    """Where and how ``seg3d predict --engine ray`` runs (:func:`seg3d.runners.ray.predict_folder_ray`).

    Attributes:
        address: ``None``: start a private Ray cluster on this machine (127.0.0.1 only) and stop it at the end;
            ``"auto"`` (the cluster this machine belongs to) or ``"HOST:PORT"``: join a running cluster.
        workers: worker processes in all (``None``: one per ``gpus_per_worker`` GPUs, then one per
            ``cpus_per_worker`` CPUs left, over every node).
        gpus_per_worker: GPUs a GPU worker reserves (fractions share a GPU: 0.5 = two workers per GPU).
        cpus_per_worker: CPUs each worker reserves, and its torch threads (``None``: 4, or a node's CPUs if fewer).
        max_attempts: a case whose worker dies is submitted again until it has been tried this many times.
        max_restarts: how often Ray restarts each worker process that died (then the worker is given up).
        cases_in_flight: cases handed to one worker at a time (2: the next is read while one is predicted).
        startup_timeout_s: seconds to wait for every worker to start, load the model and pass the storage probe.
        object_store_mb: Ray's shared-memory object store of a private local cluster (seg3d sends only file
            names and small records through it).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 1.0
    cpus_per_worker: int | None = None
    max_attempts: int = 3
    max_restarts: int = 3
    cases_in_flight: int = 2
    startup_timeout_s: float = 300.0
    object_store_mb: int = 256

    def __post_init__(self) -> None:
        if self.address is not None and self.address != "auto" and \
                not (":" in self.address and self.address.rsplit(":", 1)[1].isdigit()):
            raise Seg3dError(f"--ray-address takes 'auto' or HOST:PORT (e.g. 10.0.0.1:6379), got '{self.address}'")
        if self.workers is not None and self.workers < 1:
            raise Seg3dError(f"--workers must be >= 1, got {self.workers}")
        if not self.gpus_per_worker >= 0:
            raise Seg3dError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 1:
            raise Seg3dError(f"--cpus-per-worker must be >= 1, got {self.cpus_per_worker}")
        if self.max_attempts < 1 or self.max_restarts < 0 or self.cases_in_flight < 1:
            raise Seg3dError(f"max_attempts and cases_in_flight must be >= 1 and max_restarts >= 0 (got "
                             f"{self.max_attempts}, {self.cases_in_flight}, {self.max_restarts})")
        if not self.startup_timeout_s > 0 or self.object_store_mb < 80:
            raise Seg3dError(f"startup_timeout_s must be > 0 and object_store_mb >= 80 (Ray's minimum), got "
                             f"{self.startup_timeout_s}, {self.object_store_mb}")


def settings_from(cls, settings, overrides: dict[str, Any]):
    """``settings`` (or the defaults) with keyword ``overrides``; unknown names are a TypeError, as for a call."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    base = settings if settings is not None else cls()
    return replace(base, **overrides) if overrides else base


def _one_fold(fold) -> str:
    folds = parse_folds(fold)
    if folds == ALL_AVAILABLE or len(folds) != 1:
        raise Seg3dError(f"training takes one fold (a number or 'all'), got '{fold}'")
    return folds[0]
