"""Unlabelled image folders for distillation: listed, preprocessed like training cases, bad files skipped.

A folder holds images named as ``seg3d predict`` input (``<case>_0000.nii.gz`` per channel, or ``<case>.nii.gz``
for one channel). Each case is preprocessed with the plan into a cache of its own (the training cache's entry
format, label all background), so the sampler reads it like any cached case. A file that cannot be read or
preprocessed (truncated, not an image, wrong channel count, NaNs, another grid between channels) is reported
with the reason and skipped; every input is accounted for in the returned record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError
from seg3d.progress import ProgressFn, report


@dataclass(frozen=True)
class UnlabelledFolder:
    """What happened to one folder: the case ids used and the files skipped (``{"files": [...], "reason"}``)."""

    folder: str
    used: tuple[str, ...] = ()
    skipped: tuple[dict, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "cases": len(self.used), "skipped": list(self.skipped)}


def prepare_unlabelled(folders, plan, config_name: str, cache_root: str | Path, progress: ProgressFn | None = None,
                       log=print) -> tuple[dict[str, object], list[UnlabelledFolder]]:
    """Preprocess every readable case of ``folders`` into ``cache_root/<i>`` (one cache per folder).

    Returns ``(case id -> its CaseCache, one UnlabelledFolder record per folder)``; case ids are
    ``u<i>_<case>`` (``i`` = the folder's position), so they never collide with the labelled ones.

    Raises:
        Seg3dError: a folder does not exist or holds no image at all.
    """
    from seg3d.io.image import read_image
    from seg3d.io.layout import Case, group_channel_files
    from seg3d.preprocessing.cache import (
        CACHE_VERSION,
        MANIFEST,
        PLAN_COPY,
        CaseCache,
        _entry_complete,
        build_entry,
        plan_hash,
    )

    caches: dict[str, object] = {}
    records = []
    for i, folder in enumerate(Path(f) for f in folders):
        if not folder.is_dir():
            raise Seg3dError("unlabelled image folder not found", folder)
        groups = group_channel_files(folder, plan.num_channels)
        if not groups:
            raise Seg3dError("no image files (<case>_0000.nii.gz, .nrrd, .mha, ...) in this unlabelled folder",
                             folder)
        cache_dir = Path(cache_root) / str(i)
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = plan_hash(plan, config_name)
        old = _read(cache_dir / MANIFEST)
        used, skipped = [], []
        for n, (cid, files) in enumerate(sorted(groups.items())):
            uid = f"u{i}_{cid}"
            case = Case(uid, tuple(files))
            try:
                if not (old and old.get("plan_hash") == key and _entry_complete(cache_dir, uid)
                        and _unchanged(old, uid, files)):
                    if len(files) != plan.num_channels:
                        raise Seg3dError(f"{len(files)} channel file(s), the model expects {plan.num_channels}",
                                         files[0])
                    for f in files:  # a clear reason per bad file before preprocessing
                        img = read_image(f)
                        if not (img.array.size and float(abs(img.array).max()) < float("inf")):
                            raise Seg3dError("image is empty or holds NaN/infinite values", f)
                    build_entry(case, plan, config_name, cache_dir)
                used.append((uid, [str(f) for f in files], [f.stat().st_mtime_ns for f in files]))
            except Seg3dError as e:
                skipped.append({"files": [str(f) for f in files], "reason": str(e)})
                log(f"warning: skipping unlabelled case {cid}: {e}")
            except Exception as e:  # noqa: BLE001 - any unreadable input is reported and skipped, never fatal
                skipped.append({"files": [str(f) for f in files], "reason": f"{type(e).__name__}: {e}"})
                log(f"warning: skipping unlabelled case {cid}: {type(e).__name__}: {e}")
            report(progress, n + 1, len(groups), f"unlabelled {folder.name}")
        plan.save(cache_dir / PLAN_COPY)
        write_json_atomic(cache_dir / MANIFEST, {
            "version": CACHE_VERSION, "dataset_root": str(folder.resolve()), "dataset_digest": "",
            "config_name": config_name, "plan_hash": key, "case_ids": [u for u, _, _ in used],
            "files": {u: {"files": f, "mtimes": m} for u, f, m in used}})
        cache = CaseCache(cache_dir)
        caches.update({u: cache for u, _, _ in used})
        records.append(UnlabelledFolder(str(folder.resolve()), tuple(u for u, _, _ in used), tuple(skipped)))
    return caches, records


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unchanged(old: dict, uid: str, files) -> bool:
    rec = (old.get("files") or {}).get(uid)
    return bool(rec) and rec["files"] == [str(f) for f in files] and \
        rec["mtimes"] == [f.stat().st_mtime_ns for f in files]
