"""The preprocessing cache: one entry per case, memory-mappable, verified, rebuilt when stale or damaged.

Entry files for case ``X``: ``X_data.npy`` (float32 (C, *shape)), ``X_seg.npy`` (int16 (1, *shape)),
``X_fg.npz`` (up to ``MAX_FG_LOCATIONS`` voxel coordinates per foreground class, fixed seed, for
oversampling) and, written last, ``X.json`` (properties, shapes, file sizes, CRC32s). Every file is written
under a temporary name and renamed, so concurrent readers (several folds training at once) never see a
partial file and an entry without its JSON is simply incomplete (resumable builds). ``manifest.json`` ties the
cache to the dataset digest and a hash of the plan configuration, and records the dataset root and a copy
of the plan, so a damaged entry can be rebuilt from its source case by any reader.
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from seg3d.atomic import atomic_path, write_json_atomic
from seg3d.core.plan import Plan
from seg3d.errors import Seg3dError
from seg3d.io.layout import Dataset, dataset_digest, load_dataset, read_case_images, read_case_label
from seg3d.parallel import map_cases
from seg3d.preprocessing.pipeline import CaseProperties, preprocess_case
from seg3d.progress import ProgressFn, report

CACHE_VERSION = 1
MAX_FG_LOCATIONS = 10_000
FG_SEED = 1234
MANIFEST = "manifest.json"
# the digest's salt: the fingerprint's when caches were first written, kept so existing caches stay valid
DIGEST_SALT = "seg3d-fingerprint v1 samples 10000000\n"
PLAN_COPY = "plans.json"


def plan_hash(plan, config_name: str) -> str:
    """Hash of everything in the plan that changes a cache entry."""
    d = plan.to_dict()
    key = {"version": CACHE_VERSION, "config": d["configurations"][config_name], "labels": d["labels"],
           "normalization": d["normalization"], "channels": d["channel_names"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def foreground_locations(seg: np.ndarray, num_classes: int, seed: int = FG_SEED) -> dict[int, np.ndarray]:
    """Per class 1..K-1: up to ``MAX_FG_LOCATIONS`` voxel coordinates (N, 3) int32, sampled with a fixed seed."""
    rng = np.random.default_rng(seed)
    s = seg.reshape(seg.shape[-3:])
    out = {}
    for c in range(1, num_classes):
        flat = np.flatnonzero(s == c)
        if flat.size > MAX_FG_LOCATIONS:
            flat = np.sort(rng.choice(flat, MAX_FG_LOCATIONS, replace=False))
        out[c] = np.stack(np.unravel_index(flat, s.shape), axis=1).astype(np.int32).reshape(-1, 3)
    return out


def _entry_paths(cache_dir: Path, case_id: str) -> dict[str, Path]:
    return {"data": cache_dir / f"{case_id}_data.npy", "seg": cache_dir / f"{case_id}_seg.npy",
            "fg": cache_dir / f"{case_id}_fg.npz", "json": cache_dir / f"{case_id}.json"}


def build_entry(case, plan, config_name: str, cache_dir: Path) -> str:
    """Preprocess one case and write its entry (JSON last). Returns the case id."""

    cfg = plan.config(config_name)
    data, geo = read_case_images(case, plan.num_channels)
    seg, _ = read_case_label(case) if case.label is not None else (None, None)
    pdata, pseg, props = preprocess_case(data, geo, plan, cfg, seg=seg, case_id=str(case.label or case.images[0]))
    del data, seg
    if pseg is None:
        pseg = np.zeros((1, *pdata.shape[1:]), np.int16)
    fg = foreground_locations(pseg, plan.num_classes)
    p = _entry_paths(cache_dir, case.case_id)
    _save_npy(p["data"], pdata)
    _save_npy(p["seg"], pseg)
    with atomic_path(p["fg"]) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{f"c{c}": v for c, v in fg.items()})
    meta = {"case_id": case.case_id, "properties": props.to_dict(),
            "data_shape": list(pdata.shape), "seg_shape": list(pseg.shape),
            "sizes": {k: p[k].stat().st_size for k in ("data", "seg", "fg")},
            "crc": {"data": _crc(pdata), "seg": _crc(pseg)},
            "fg_counts": {str(c): len(v) for c, v in fg.items()}}
    write_json_atomic(p["json"], meta)
    return case.case_id


def _entry_complete(cache_dir: Path, case_id: str) -> bool:
    """Cheap: the JSON is there and every file has the size it records."""
    p = _entry_paths(cache_dir, case_id)
    try:
        meta = json.loads(p["json"].read_text())
        return all(p[k].stat().st_size == meta["sizes"][k] for k in ("data", "seg", "fg"))
    except (OSError, ValueError, KeyError):
        return False


def _remove_entry(cache_dir: Path, case_id: str) -> None:
    for path in _entry_paths(cache_dir, case_id).values():
        path.unlink(missing_ok=True)


def _build_one(case, plan, config_name: str, cache_dir: str):
    try:
        return case.case_id, build_entry(case, plan, config_name, Path(cache_dir)) and None
    except Seg3dError as e:
        return case.case_id, str(e)


def build_cache(dataset, plan, config_name: str, cache_dir, workers: int | None = None,
                progress: ProgressFn | None = None) -> CaseCache:
    """Fill ``cache_dir`` with one preprocessed entry per training case and return a :class:`CaseCache`.

    Complete entries are kept when the dataset digest and the plan configuration hash are unchanged;
    otherwise every entry is rebuilt. ``workers``: None = all cores, 0/1 = in this process.
    """


    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"version": CACHE_VERSION, "dataset_root": str(Path(ds.root).resolve()),
                "dataset_digest": dataset_digest(ds, DIGEST_SALT), "config_name": config_name,
                "plan_hash": plan_hash(plan, config_name), "case_ids": [c.case_id for c in ds.cases]}
    old = _read_manifest(cache_dir)
    keys = ("version", "dataset_digest", "config_name", "plan_hash")
    if old is None or any(old.get(k) != manifest[k] for k in keys):
        for c in (old or {}).get("case_ids", []):
            _remove_entry(cache_dir, c)
        for c in ds.cases:
            _remove_entry(cache_dir, c.case_id)
    plan.save(cache_dir / PLAN_COPY)
    write_json_atomic(cache_dir / MANIFEST, manifest)
    todo = [c for c in ds.cases if not _entry_complete(cache_dir, c.case_id)]
    total, done = len(ds.cases), len(ds.cases) - len(todo)
    report(progress, done, total, "cached" if not todo else "preprocessing")
    if todo and workers != 0 and workers != 1:
        import torch  # noqa: F401  imported once here so forked workers inherit it (2-3 s each otherwise)

    def counted(done_before: int) -> ProgressFn | None:  # progress over all cases, cached ones included
        return None if progress is None else lambda d, _t, m: progress(done_before + d, total, m)

    results = map_cases(partial(_build_one, plan=plan, config_name=config_name, cache_dir=str(cache_dir)), todo,
                        workers, counted(done), message=lambda res: res[0], chunksize=1)
    failures = [err for _, err in results if err]
    if failures:
        raise Seg3dError(f"{len(failures)} case(s) could not be preprocessed:\n  " + "\n  ".join(failures),
                         cache_dir)
    return CaseCache(cache_dir)


def _read_manifest(cache_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class CaseCache:
    """Read access to a built cache; damaged entries are rebuilt from their source case with a warning.

    Each entry's shapes and file sizes are checked on every load, its CRC32s on the first load in this
    object (``verify="first"``; ``"always"`` or ``"never"`` also accepted).
    """

    def __init__(self, cache_dir, verify: str = "first", mmap: bool = True):
        self.cache_dir = Path(cache_dir)
        self.manifest = _read_manifest(self.cache_dir)
        if self.manifest is None:
            raise Seg3dError("not a seg3d cache (manifest.json missing or unreadable; run build_cache)",
                             self.cache_dir)
        self.case_ids: tuple[str, ...] = tuple(self.manifest["case_ids"])
        self.config_name: str = self.manifest["config_name"]
        self.verify, self.mmap = verify, mmap
        self._verified: set[str] = set()
        self._plan = None

    @property
    def plan(self):
        if self._plan is None:

            self._plan = Plan.load(self.cache_dir / PLAN_COPY)
        return self._plan

    def meta(self, case_id: str) -> dict:
        return json.loads(_entry_paths(self.cache_dir, case_id)["json"].read_text())

    def properties(self, case_id: str):

        return CaseProperties.from_dict(self.meta(case_id)["properties"])

    def load(self, case_id: str):
        """``(data float32 (C, *shape), seg int16 (1, *shape), {class: (N, 3) int32 coordinates})``."""
        if case_id not in self.case_ids:
            raise Seg3dError(f"case '{case_id}' is not in this cache", self.cache_dir)
        try:
            return self._load_checked(case_id)
        except (OSError, ValueError, KeyError, EOFError, zlib.error) as e:
            reason = str(e) or type(e).__name__
        warnings.warn(f"cache entry '{case_id}' in {self.cache_dir} is damaged ({reason}); rebuilding it "
                      "from the source case", stacklevel=2)
        self._rebuild(case_id)
        return self._load_checked(case_id)

    def _load_checked(self, case_id: str):
        p = _entry_paths(self.cache_dir, case_id)
        meta = json.loads(p["json"].read_text())
        for k in ("data", "seg", "fg"):
            if p[k].stat().st_size != meta["sizes"][k]:
                raise ValueError(f"{p[k].name} has {p[k].stat().st_size} bytes, expected {meta['sizes'][k]}")
        mode = "r" if self.mmap else None
        data = np.load(p["data"], mmap_mode=mode, allow_pickle=False)
        seg = np.load(p["seg"], mmap_mode=mode, allow_pickle=False)
        if list(data.shape) != meta["data_shape"] or data.dtype != np.float32:
            raise ValueError(f"{p['data'].name} holds {data.dtype} {data.shape}, expected {meta['data_shape']}")
        if list(seg.shape) != meta["seg_shape"] or seg.dtype != np.int16:
            raise ValueError(f"{p['seg'].name} holds {seg.dtype} {seg.shape}, expected {meta['seg_shape']}")
        check = self.verify == "always" or (self.verify == "first" and case_id not in self._verified)
        if check:
            for name, arr in (("data", data), ("seg", seg)):
                if _crc(arr) != meta["crc"][name]:
                    raise ValueError(f"{p[name].name} fails its checksum")
        with np.load(p["fg"], allow_pickle=False) as z:
            fg = {int(k[1:]): z[k] for k in z.files}
        if any(len(fg.get(int(c), ())) != n for c, n in meta["fg_counts"].items()):
            raise ValueError(f"{p['fg'].name} does not match its recorded foreground counts")
        self._verified.add(case_id)
        return data, seg, fg

    def _rebuild(self, case_id: str) -> None:

        root = self.manifest["dataset_root"]
        try:
            ds = load_dataset(root)
        except Seg3dError as e:
            raise Seg3dError(f"cache entry '{case_id}' is damaged and its dataset cannot be read to rebuild "
                             f"it: {e}", self.cache_dir) from None
        case = next((c for c in ds.cases if c.case_id == case_id), None)
        if case is None:
            raise Seg3dError(f"cache entry '{case_id}' is damaged and the case is no longer in {root}",
                             self.cache_dir)
        build_entry(case, self.plan, self.config_name, self.cache_dir)
        self._verified.discard(case_id)
