"""The model folder: what training writes and what prediction reads. This module alone spells its file names.

Layout::

    MODEL_DIR/
      plans.json            the plan the model was trained with (a copy)
      model.json            ModelInfo: configuration, architecture, loss, the dataset it was trained on
      splits.json           cross-validation splits
      postprocessing.json   per-class decision on the connected-component rule (from CV)
      fold_K/
        checkpoint_latest.pt   everything needed to resume (written atomically every epoch)
        checkpoint_best.pt     weights with the best moving-average pseudo-Dice
        checkpoint_final.pt    weights at the end of training
        log.csv, progress.png, tensorboard/
      openvino_cache/       networks converted for OpenVINO (``seg3d predict --backend openvino``), by checksum
        validation/summary.json and the fold's validation predictions (<case>.nii.gz), with their
                   probabilities (<case>.npz, float16, small cases only) for scoring ensembles

A bundle (``seg3d export``) is a model folder's inference half: ``plans.json``, ``model.json`` and
``postprocessing.json`` under the same names, and the chosen folds' networks converted for a runtime instead
of checkpoints; its own file names live in :mod:`seg3d.core.bundle`.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from seg3d.atomic import write_json_atomic
from seg3d.core.plan import Plan
from seg3d.errors import Seg3dError

# torch imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

PLANS_JSON = "plans.json"
MODEL_JSON = "model.json"
SPLITS_JSON = "splits.json"
POSTPROCESSING_JSON = "postprocessing.json"
CHECKPOINT_KINDS = ("final", "best", "latest")
VALIDATION_SUMMARY = "summary.json"


@dataclass(frozen=True)
class ModelInfo:
    """``model.json``: how the model was trained (configuration, architecture, loss) and on which data."""

    config: str = "3d_fullres"
    arch: str = "unet"
    loss: str = "ce_dice"
    deep_supervision: bool = True
    seg3d_version: str = ""
    dataset_dir: str = ""  # absolute path of the training dataset ('' when unknown): CV references live there
    # where the model came from when it was not trained on labels alone, e.g. ``seg3d distill``'s record of its
    # teachers (folders, weight checksums, folds, TTA), temperature, alpha and data; None for ordinary training
    provenance: dict | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ModelFolder:
    """Every path and file of a model folder, the one checkpoint loader and the readers ``seg3d summary`` needs.

    >>> mf = ModelFolder("plans/models/3d_fullres_unet_ce_dice")          # doctest: +SKIP
    >>> mf.checkpoint_path(0), mf.available_folds()                      # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- names -----------------------------------------------------------------------------------------
    @property
    def plans_json(self) -> Path:
        return self.path / PLANS_JSON

    @property
    def model_json(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def splits_json(self) -> Path:
        return self.path / SPLITS_JSON

    @property
    def postprocessing_json(self) -> Path:
        return self.path / POSTPROCESSING_JSON

    def fold_dir(self, fold: int | str) -> Path:
        return self.path / f"fold_{fold}"

    def checkpoint_path(self, fold: int | str, kind: str = "final") -> Path:
        """``fold_K/checkpoint_<kind>.pt``; ``kind``: final | best | latest."""
        check_checkpoint_kind(kind)
        return self.fold_dir(fold) / f"checkpoint_{kind}.pt"

    def validation_dir(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / "validation"

    def validation_summary(self, fold: int | str) -> Path:
        return self.validation_dir(fold) / VALIDATION_SUMMARY

    def training_log(self, fold: int | str) -> Path:
        """``fold_K/log.csv``: one row per epoch."""
        return self.fold_dir(fold) / "log.csv"

    def progress_plot(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / "progress.png"

    def tensorboard_dir(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / "tensorboard"

    def conversion_cache_dir(self, runtime: str) -> Path:
        """``<runtime>_cache/``: networks converted for an inference runtime (``openvino_cache``), keyed inside
        by weights checksum and runtime version (:mod:`seg3d.inference.backends.openvino`)."""
        return self.path / f"{runtime}_cache"

    def fold_dirs(self) -> list[tuple[str, Path]]:
        """``(fold name, folder)`` of every ``fold_*`` folder, numbered folds in order, ``all`` last."""
        found = [(d.name[len("fold_"):], d) for d in self.path.glob("fold_*") if d.is_dir()]
        return sorted(found, key=lambda fd: _fold_key(fd[0]))

    def available_folds(self, kind: str = "final") -> list[str]:
        """Folds with a ``checkpoint_<kind>.pt``, in order (``all`` last)."""
        return [f for f, _ in self.fold_dirs() if self.checkpoint_path(f, kind).is_file()]

    # --- readers and writers -----------------------------------------------------------------------------
    def require(self) -> ModelFolder:
        """This folder, checked to exist. Raises :class:`Seg3dError` naming it otherwise."""
        if not self.path.is_dir():
            raise Seg3dError("model folder not found", self.path)
        return self

    def load_plan(self) -> Plan:

        return Plan.load(self.plans_json)

    def save_plan(self, plan: Plan) -> None:
        plan.save(self.plans_json)

    def load_info(self) -> ModelInfo:
        """``model.json``; a model trained before it recorded the dataset reads it from its ``plans.json``."""
        path = self.model_json
        if not path.is_file():
            raise Seg3dError("model.json not found: is this a seg3d model folder?", path)
        try:
            info = ModelInfo.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise Seg3dError(f"malformed model.json ({e})", path) from None
        if not info.dataset_dir and self._legacy_dataset_dir():

            info = replace(info, dataset_dir=self._legacy_dataset_dir())
        return info

    def _legacy_dataset_dir(self) -> str:
        """``extra.dataset_dir`` of a plans.json written before the plan held no path ('' if none)."""
        extra = (self.read_json(self.plans_json) or {}).get("extra")
        d = extra.get("dataset_dir") if isinstance(extra, dict) else None
        return d if isinstance(d, str) else ""

    def save_info(self, info: ModelInfo) -> None:
        write_json_atomic(self.model_json, asdict(info))

    def dataset_dir(self) -> Path | None:
        """The training dataset recorded in ``model.json`` (or an older plans.json); ``None`` when unknown."""
        try:
            d = self.load_info().dataset_dir
        except Seg3dError:
            d = self._legacy_dataset_dir()
        return Path(d) if d else None

    def load_postprocessing_dict(self) -> dict | None:
        """``postprocessing.json`` as a dict, ``None`` when the folder has none. Raises on a damaged file."""
        path = self.postprocessing_json
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise Seg3dError(f"malformed post-processing file ({type(e).__name__}: {e})", path) from None
        if not isinstance(d, dict):
            raise Seg3dError("malformed post-processing file (not a JSON object)", path)
        return d

    def training_cases(self, fold: int | str) -> list[str] | None:
        """The case ids fold ``fold`` was trained on, from ``splits.json``; ``None`` for fold ``all`` (every case
        of the dataset).

        Raises:
            Seg3dError: ``splits.json`` missing or malformed, or without that fold.
        """
        if str(fold) == "all":
            return None
        path = self.splits_json
        try:
            splits = json.loads(path.read_text())
            train = splits[int(fold)]["train"]
        except FileNotFoundError:
            raise Seg3dError(f"no splits.json: the cases fold {fold} was trained on are unknown", self.path) \
                from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise Seg3dError(f"no training cases for fold {fold} ({type(e).__name__}: {e})", path) from None
        if not isinstance(train, list) or not train:
            raise Seg3dError(f"fold {fold} has no training cases", path)
        return [str(c) for c in train]

    def load_validation_summary(self, fold: int | str) -> dict | None:
        return self.read_json(self.validation_summary(fold))

    @staticmethod
    def read_json(path: Path) -> dict | None:
        """A JSON object from a file of this folder; ``None`` when absent or unreadable (summaries tolerate
        half-trained folders)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
            return None
        return d if isinstance(d, dict) else None

    # --- checkpoints -------------------------------------------------------------------------------------
    def load_checkpoint(self, path_or_fold: str | int | Path, kind: str = "final") -> dict[str, Any]:
        """A checkpoint (``fold`` + ``kind``, or a path) as a dict: the one loader, with one trust rule.

        Tensors-only checkpoints load with ``weights_only=True``; one holding other Python objects (resume
        state: RNG states, schedule) is unpickled in full, which is trusted because seg3d's trainer wrote it
        into the user's own model folder. Raises :class:`Seg3dError` for a missing, damaged or foreign file.
        """
        path = path_or_fold if isinstance(path_or_fold, Path) else self.checkpoint_path(path_or_fold, kind)
        return load_checkpoint_file(path)

    def weights_checksum(self, folds: Iterable[int | str], kind: str = "final") -> str:
        """sha256 over the chosen folds' checkpoint files, in the given order (caches, provenance, distillation)."""
        h = hashlib.sha256()
        for f in folds:
            path = self.checkpoint_path(f, kind)
            if not path.is_file():
                raise Seg3dError(f"fold {f} has no checkpoint_{kind}.pt", self.path)
            h.update(f"fold_{f}:".encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def check_checkpoint_kind(kind: str) -> None:
    if kind not in CHECKPOINT_KINDS:
        raise Seg3dError(f"checkpoint must be one of {', '.join(CHECKPOINT_KINDS)}, got '{kind}'")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """See :meth:`ModelFolder.load_checkpoint`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise Seg3dError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        ckpt = _load_trusted(path)
    except (RuntimeError, EOFError, OSError) as e:
        raise Seg3dError(f"cannot read checkpoint ({e}); was training interrupted?", path) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise Seg3dError("not a seg3d checkpoint (no 'model' entry)", path)
    return ckpt


def _load_trusted(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise Seg3dError(f"cannot read checkpoint ({type(e).__name__}: {e})", path) from None


def _fold_key(name: str):
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)
