"""Teacher targets: the teacher ensemble's probabilities for every training case, computed once and cached.

The probabilities come from :meth:`seg3d.inference.Predictor.predict_preprocessed` -- the very sliding window,
mirroring TTA and fold averaging of ``seg3d predict`` -- applied to the case as it sits in the preprocessing
cache, so they live on the preprocessed grid the student is trained on. Several teacher model folders are
averaged with equal weight (each folder's own folds and mirrorings averaged first).

Storage, per case ``X`` in the targets folder (every file written under a temporary name and renamed; the JSON
last, so a case without its JSON is simply not done):

* ``X_teacher.npy``: float16 ``(K, *shape)`` probabilities, when ``K <= max_dense_classes`` (default 8);
* otherwise the ``top_k`` (default 4) most probable classes per voxel: ``X_teacher.npy`` float16 ``(k, *shape)``
  and ``X_teacher_idx.npy`` uint8/uint16 ``(k, *shape)`` class indices; the rest of the mass is dropped and the
  kept values renormalised when patches are read. The disk then grows with ``k``, not with the number of
  classes: ``2 * k + k * (1 or 2)`` bytes per voxel (16 bytes for k = 4 and <= 256 classes) instead of ``2 * K``.
* ``X_teacher_fg.npz``: voxel coordinates of each class of the teacher's argmax (as the cache's ``X_fg.npz``),
  so unlabelled cases get the same foreground oversampling as labelled ones;
* ``X_teacher.json``: the teacher key (weights checksums, folds, TTA, step, precision, storage), shapes.

Resumable: a case whose JSON carries the current key is skipped. Parallel-safe: several processes (or
machines sharing the folder) may fill it at once; each claims a case with an exclusive ``X.claim`` file
(``O_EXCL``; a claim of a process that no longer runs on this host is taken over) and waits at the end for
the cases others are still computing.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg3d.atomic import atomic_path, write_json_atomic
from seg3d.errors import Seg3dError
from seg3d.progress import ProgressFn, report

MAX_DENSE_CLASSES = 8
TOP_K = 4
TARGETS_VERSION = 1


@dataclass(frozen=True)
class TargetStorage:
    """How the probabilities are stored: dense float16 up to ``max_dense_classes`` classes, else ``top_k``."""

    max_dense_classes: int = MAX_DENSE_CLASSES
    top_k: int = TOP_K

    def __post_init__(self):
        if self.max_dense_classes < 2 or self.top_k < 2:
            raise Seg3dError(f"target storage needs max_dense_classes >= 2 and top_k >= 2, got "
                             f"{self.max_dense_classes} and {self.top_k}")

    def mode(self, num_classes: int) -> str:
        return "dense" if num_classes <= self.max_dense_classes else "topk"

    def describe(self, num_classes: int) -> dict:
        if self.mode(num_classes) == "dense":
            return {"mode": "dense", "dtype": "float16", "classes": num_classes}
        return {"mode": "topk", "dtype": "float16", "k": min(self.top_k, num_classes), "classes": num_classes}


def _paths(folder: Path, case_id: str) -> dict[str, Path]:
    return {"p": folder / f"{case_id}_teacher.npy", "idx": folder / f"{case_id}_teacher_idx.npy",
            "fg": folder / f"{case_id}_teacher_fg.npz", "json": folder / f"{case_id}_teacher.json",
            "claim": folder / f"{case_id}.claim"}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def encode(probs, storage: TargetStorage) -> dict[str, np.ndarray]:
    """Probabilities ``(K, *shape)`` (torch or numpy) -> the arrays to store (``p`` and, top-k, ``idx``)."""
    import torch

    t = torch.as_tensor(probs).float()
    k_all = t.shape[0]
    if storage.mode(k_all) == "dense":
        return {"p": t.to(torch.float16).cpu().numpy()}
    k = min(storage.top_k, k_all)
    vals, idx = torch.topk(t, k, dim=0)
    idx_dtype = np.uint8 if k_all <= 256 else np.uint16
    return {"p": vals.to(torch.float16).cpu().numpy(), "idx": idx.cpu().numpy().astype(idx_dtype)}


def decode(p: np.ndarray, idx: np.ndarray | None, num_classes: int) -> np.ndarray:
    """Stored arrays (any region of them) -> float32 probabilities ``(K, *region)`` summing to 1 per voxel.

    Dense: the float16 values, renormalised. Top-k: the kept classes scattered into K channels, renormalised
    (the dropped classes get 0). A voxel whose stored mass is 0 (padding outside the image) is background.
    """
    p = np.asarray(p, dtype=np.float32)
    if idx is None:
        out = p
    else:
        out = np.zeros((num_classes, *p.shape[1:]), np.float32)
        idx = np.asarray(idx).astype(np.int64)
        np.put_along_axis(out, idx, p, axis=0)
        # duplicate indices only arise from padding (index 0, value 0): the put above left 0 there
    total = out.sum(0, keepdims=True)
    empty = total < 1e-6
    out = out / np.maximum(total, 1e-6)
    out[:1] = np.where(empty, 1.0, out[:1])
    return out


class TeacherEnsemble:
    """One or more teacher model folders, each a :class:`Predictor`; probabilities averaged over folders.

    Args:
        model_dirs: teacher model folders (the first one's plan defines the preprocessing).
        folds: folds of each teacher (``"all-available"`` by default).
        tta: mirroring TTA as the model was trained (``seg3d predict``'s default).
        step, checkpoint, device, precision: as for ``seg3d predict``.

    Raises:
        Seg3dError: a folder is not a model folder, has no such folds, or its plan preprocesses differently
            (spacing, normalization, channels, labels) from the first teacher's.
    """

    def __init__(self, model_dirs: Sequence[str | Path], folds="all-available", tta: bool = True,
                 step: float = 0.5, checkpoint: str = "final", device: str = "auto", precision: str = "auto",
                 config: str | None = None):
        from seg3d.inference.predictor import Predictor

        if not model_dirs:
            raise Seg3dError("distillation needs at least one teacher model folder")
        self.model_dirs = [Path(m) for m in model_dirs]
        folds = folds if isinstance(folds, str) else tuple(str(f) for f in folds)
        self.predictors = [Predictor(m, folds=folds, config=config, device=device, tta=tta, step=step,
                                     checkpoint=checkpoint, postprocess=False, precision=precision)
                           for m in self.model_dirs]
        first = self.predictors[0]
        for p in self.predictors[1:]:
            diff = _grid_difference(first, p)
            if diff:
                raise Seg3dError(f"this teacher preprocesses differently from {first.model_dir} ({diff}); "
                                 "teachers must share spacing, normalization, channels and labels", p.model_dir)
        self.plan, self.config_name, self.config = first.plan, first.config_name, first.config
        self.tta, self.step, self.checkpoint, self.precision = tta, step, checkpoint, precision
        self._checksums: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    def checksums(self) -> list[str]:
        """sha256 of each teacher's checkpoint files (its folds, in order; ModelFolder.weights_checksum)."""
        if self._checksums is None:
            self._checksums = [p.folder.weights_checksum(p.folds, self.checkpoint) for p in self.predictors]
        return self._checksums

    def describe(self) -> list[dict]:
        """Provenance: folder, architecture, folds, checkpoint kind, weights checksum of each teacher."""
        return [{"model_dir": str(p.model_dir.resolve()), "arch": p.info.arch, "config": p.config_name,
                 "folds": list(p.folds), "checkpoint": self.checkpoint, "weights_sha256": c}
                for p, c in zip(self.predictors, self.checksums())]

    def key(self, storage: TargetStorage) -> str:
        """Identifies the targets: same key, same probabilities (weights, folds, TTA, step, precision, storage)."""
        d = {"version": TARGETS_VERSION, "teachers": self.checksums(), "folds": [p.folds for p in self.predictors],
             "tta": self.tta, "step": self.step, "precision": self.precision,
             "storage": storage.describe(self.num_classes)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def predict(self, pdata: np.ndarray):
        """Mean probabilities ``(K, *shape)`` float32 (torch, on the device) of a preprocessed case."""
        total = None
        for p in self.predictors:
            probs = p.predict_preprocessed(np.array(pdata, dtype=np.float32))  # a copy: caches are read-only maps
            total = probs if total is None else total + probs.to(total.device)
        return total / len(self.predictors) if len(self.predictors) > 1 else total


def _grid_difference(a, b) -> str:
    ca, cb = a.config, b.config
    checks = (("spacing", ca.spacing, cb.spacing), ("channels", a.plan.channel_names, b.plan.channel_names),
              ("labels", a.plan.labels, b.plan.labels),
              ("normalization", a.plan.to_dict()["normalization"], b.plan.to_dict()["normalization"]),
              ("configuration dimensions", ca.ndim, cb.ndim))
    return "; ".join(f"{name} {x} vs {y}" for name, x, y in checks if x != y)


def targets_done(folder: Path, case_id: str, key: str) -> bool:
    """The case's targets exist, are complete (file sizes) and were made by the teacher ``key``."""
    p = _paths(folder, case_id)
    try:
        meta = json.loads(p["json"].read_text())
        return meta["key"] == key and all(p[n].stat().st_size == s for n, s in meta["sizes"].items())
    except (OSError, ValueError, KeyError):
        return False


def write_targets(folder: Path, case_id: str, probs, storage: TargetStorage, key: str) -> None:
    """Store one case's probabilities ``(K, *shape)`` (see module doc); the JSON is written last."""
    from seg3d.preprocessing.cache import foreground_locations

    p = _paths(folder, case_id)
    arrays = encode(probs, storage)
    num_classes = int(probs.shape[0])
    _save_npy(p["p"], arrays["p"])
    if "idx" in arrays:
        _save_npy(p["idx"], arrays["idx"])
    argmax = np.asarray(probs.argmax(0).cpu() if hasattr(probs, "cpu") else np.argmax(probs, 0))
    fg = foreground_locations(argmax[None], num_classes)
    with atomic_path(p["fg"]) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{f"c{c}": v for c, v in fg.items()})
    sizes = {n: p[n].stat().st_size for n in ("p", "fg", *(("idx",) if "idx" in arrays else ()))}
    write_json_atomic(p["json"], {"case_id": case_id, "key": key, "shape": list(probs.shape),
                                  "storage": storage.describe(num_classes), "sizes": sizes})


def load_targets(folder: Path, case_id: str, mmap: bool = True):
    """``(p float16 (k, *shape), idx (k, *shape) or None, fg {class: (N, 3)})`` of one case, memory-mapped."""
    p = _paths(folder, case_id)
    mode = "r" if mmap else None
    vals = np.load(p["p"], mmap_mode=mode)
    idx = np.load(p["idx"], mmap_mode=mode) if p["idx"].is_file() else None
    with np.load(p["fg"]) as z:
        fg = {int(k[1:]): z[k] for k in z.files}
    return vals, idx, fg


def _claim(path: Path) -> bool:
    """Create ``path`` exclusively (pid@host inside); take over a claim whose process is gone (same host)."""
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, host = path.read_text().strip().split("@", 1)
            except (OSError, ValueError):
                return False
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)  # stale: its process died (killed run); take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compute_targets(teacher: TeacherEnsemble, sources: dict[str, object], folder: str | Path,
                    storage: TargetStorage = TargetStorage(), progress: ProgressFn | None = None,
                    log=print, wait_poll_s: float = 2.0) -> dict:
    """Teacher targets for every case of ``sources`` (case id -> a cache with ``load(case_id)``) in ``folder``.

    Returns ``{"computed": n, "reused": n, "seconds": s, "seconds_per_case": s}``. Cases already done with the
    same teacher key are reused; cases another live process has claimed are waited for.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = teacher.key(storage)
    ids = list(sources)
    done = {c for c in ids if targets_done(folder, c, key)}
    reused = len(done)
    report(progress, len(done), len(ids), "teacher targets")
    computed, t0 = 0, time.perf_counter()
    while len(done) < len(ids):
        progressed = False
        for cid in ids:
            if cid in done:
                continue
            if targets_done(folder, cid, key):
                done.add(cid)
                continue
            claim = _paths(folder, cid)["claim"]
            if not _claim(claim):
                continue
            try:
                if not targets_done(folder, cid, key):
                    data = sources[cid].load(cid)[0]
                    write_targets(folder, cid, teacher.predict(data), storage, key)
                    computed += 1
            finally:
                claim.unlink(missing_ok=True)
            done.add(cid)
            progressed = True
            report(progress, len(done), len(ids), cid)
        if not progressed and len(done) < len(ids):
            time.sleep(wait_poll_s)  # the rest are being computed by another process
    sec = time.perf_counter() - t0
    if computed:
        log(f"teacher targets: {computed} case(s) computed in {sec:.0f} s ({sec / computed:.2f} s per case), "
            f"{reused} reused")
    return {"computed": computed, "reused": reused, "seconds": sec,
            "seconds_per_case": sec / computed if computed else None}
