"""Cross-validation splits: deterministic, saved as ``MODEL_DIR/splits.json``, user-suppliable.

The file is a list with one ``{"train": [...], "val": [...]}`` per fold (the format nnU-Net's
``splits_final.json`` also uses), so a user can write their own and the trainer respects it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError

SPLIT_SEED = 12345  # fixed: the same case list always gives the same folds


def make_splits(case_ids: list[str], num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """KFold with shuffling: case ids sorted, permuted by a fixed seed, cut into ``num_folds`` near-equal parts."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise Seg3dError(f"cross-validation needs at least 2 training cases, the dataset has {len(ids)}")
    k = min(num_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, k)
    out = []
    for i in range(k):
        val = sorted(ids[j] for j in parts[i])
        train = sorted(ids[j] for p, part in enumerate(parts) if p != i for j in part)
        out.append({"train": train, "val": val})
    return out


def load_or_create_splits(path: str | Path, case_ids: list[str], num_folds: int = 5,
                          write: bool = True) -> list[dict]:
    """The splits file ``path`` (``ModelFolder.splits_json``) if it exists (checked against the cases), else new
    splits, saved there if ``write``."""
    path = Path(path)
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise Seg3dError(f"invalid JSON ({e})", path) from None
        _check(splits, set(case_ids), path)
        return splits
    splits = make_splits(case_ids, num_folds)
    if write:
        write_json_atomic(path, splits)
    return splits


def _check(splits, known: set[str], path: Path) -> None:
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
            for s in splits):
        raise Seg3dError('splits.json must be a list of {"train": [...], "val": [...]} per fold', path)
    for i, s in enumerate(splits):
        unknown = sorted((set(s["train"]) | set(s["val"])) - known)
        if unknown:
            raise Seg3dError(f"fold {i} names case(s) not in the dataset: {', '.join(unknown[:5])}", path)
        if not s["train"]:
            raise Seg3dError(f"fold {i} has no training cases", path)


def fold_cases(splits: list[dict], fold: int | str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of a fold; ``"all"`` trains on every case and has no held-out cases."""
    if str(fold) == "all":
        return sorted(case_ids), []
    try:
        f = int(fold)
    except ValueError:
        raise Seg3dError(f"fold must be a number or 'all', got '{fold}'") from None
    if not 0 <= f < len(splits):
        raise Seg3dError(f"fold {f} does not exist: the splits have folds 0..{len(splits) - 1}")
    return list(splits[f]["train"]), list(splits[f]["val"])
