"""The model folder: what training writes and what prediction reads.

Layout::

    MODEL_DIR/
      plans.json            the plan the model was trained with (a copy)
      model.json            ModelInfo: configuration, architecture, loss, label values
      splits.json           cross-validation splits
      postprocessing.json   per-class decision on the connected-component rule (from CV)
      fold_K/
        checkpoint_latest.pt   everything needed to resume (written atomically every epoch)
        checkpoint_best.pt     weights with the best moving-average pseudo-Dice
        checkpoint_final.pt    weights at the end of training
        log.csv, progress.png, train.log
        validation/summary.json and the fold's validation predictions (<case>.nii.gz), with their
                   probabilities (<case>.npz, float16, small cases only) for scoring ensembles
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError


@dataclass(frozen=True)
class ModelInfo:
    config: str = "3d_fullres"
    arch: str = "unet"
    loss: str = "ce_dice"
    deep_supervision: bool = True
    seg3d_version: str = ""
    # where the model came from when it was not trained on labels alone, e.g. ``seg3d distill``'s record of its
    # teachers (folders, weight checksums, folds, TTA), temperature, alpha and data; None for ordinary training
    provenance: dict | None = None

    def save(self, model_dir: str | Path) -> None:
        write_json_atomic(Path(model_dir) / "model.json", asdict(self))

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelInfo:
        path = Path(model_dir) / "model.json"
        if not path.is_file():
            raise Seg3dError("model.json not found: is this a seg3d model folder?", path)
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise Seg3dError(f"malformed model.json ({e})", path) from None


def fold_dir(model_dir: str | Path, fold: int | str) -> Path:
    return Path(model_dir) / f"fold_{fold}"


def available_folds(model_dir: str | Path, checkpoint: str = "final") -> list[str]:
    """Folds with a finished checkpoint, in order (``all`` last)."""
    out = []
    for d in sorted(Path(model_dir).glob("fold_*")):
        if (d / f"checkpoint_{checkpoint}.pt").is_file():
            out.append(d.name[len("fold_"):])
    return sorted(out, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
