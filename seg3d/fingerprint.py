"""The dataset fingerprint: what the planner needs to know about a dataset, measured in one pass.

Per case (in a worker process): spacing and shape in the canonical orientation, the shape after cropping to
the nonzero region, voxels per label value, and a sample of foreground (label > 0) intensities per channel.
Dataset level: per-channel foreground statistics (mean/std/min/max exact over every foreground voxel,
median and 0.5/99.5 percentiles from the samples) and the median relative size after cropping. Every
foreground voxel weighs the same (nnU-Net instead draws a fixed number per case, so each case weighs the
same; the two agree on spacings and cropped shapes, and differ by a few % in mean/std on hippocampus).

:func:`scan_dataset` checks and fingerprints a dataset reading each file once (it shares
:func:`seg3d.io.checks.inspect_case` with ``seg3d check``); :func:`compute_fingerprint` is the strict form
that raises on any problem. Both reuse a saved ``fingerprint.json`` while the dataset is unchanged.
"""
from __future__ import annotations

import functools
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError
from seg3d.io.checks import (
    CaseSpec,
    CaseVoxels,
    Problem,
    expected_test_cases,
    inspect_case,
    layout_problems,
    load_or_problem,
    map_cases,
    spec_of,
    unique_cases,
)
from seg3d.io.image import Reorientation
from seg3d.io.layout import Case, Dataset, dataset_digest
from seg3d.preprocessing.crop import bbox_of, crop
from seg3d.progress import ProgressFn, report

FINGERPRINT_VERSION = 1
MAX_TOTAL_SAMPLES = 10_000_000  # foreground intensity samples per channel over the whole dataset


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, ...]  # canonical array order
    shape: tuple[int, ...]  # canonical, before cropping
    cropped_shape: tuple[int, ...]  # canonical, after cropping to nonzero
    class_voxels: dict[int, int]  # label value -> voxel count

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "spacing": list(self.spacing), "shape": list(self.shape),
                "cropped_shape": list(self.cropped_shape),
                "class_voxels": {str(k): int(v) for k, v in self.class_voxels.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> CaseFingerprint:
        return cls(str(d["case_id"]), tuple(float(v) for v in d["spacing"]), tuple(int(v) for v in d["shape"]),
                   tuple(int(v) for v in d["cropped_shape"]),
                   {int(k): int(v) for k, v in d["class_voxels"].items()})


@dataclass(frozen=True)
class ChannelStats:
    """Foreground (label > 0) intensities of one channel over the dataset."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    p00_5: float
    p99_5: float


@dataclass(frozen=True)
class Fingerprint:
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    cases: tuple[CaseFingerprint, ...]
    channel_stats: tuple[ChannelStats, ...]
    median_relative_cropped_size: float  # median over cases of prod(cropped_shape)/prod(shape)
    digest: str  # hash of file names, sizes, mtimes and dataset.json (reuse while unchanged)

    # -- per-case arrays and dataset-level summaries (canonical array order) --
    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=float).reshape(-1, 3)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c.shape for c in self.cases], dtype=int).reshape(-1, 3)

    @property
    def cropped_shapes(self) -> np.ndarray:
        return np.array([c.cropped_shape for c in self.cases], dtype=int).reshape(-1, 3)

    @property
    def median_spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(self.spacings, axis=0))

    @property
    def median_shape(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(self.shapes, axis=0))

    @property
    def median_cropped_shape(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(self.cropped_shapes, axis=0))

    @property
    def class_voxels(self) -> dict[int, int]:
        """Total voxels per label value over all cases (every declared value present, possibly 0)."""
        total = {v: 0 for v in sorted(self.labels.values())}
        for c in self.cases:
            for k, n in c.class_voxels.items():
                total[k] = total.get(k, 0) + n
        return total

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    # -- JSON --
    def to_dict(self) -> dict:
        return {"schema_version": FINGERPRINT_VERSION, "dataset_name": self.dataset_name,
                "channel_names": list(self.channel_names), "labels": dict(self.labels), "digest": self.digest,
                "median_relative_cropped_size": self.median_relative_cropped_size,
                "channel_stats": [asdict(s) for s in self.channel_stats],
                "cases": [c.to_dict() for c in self.cases]}

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        return cls(str(d["dataset_name"]), tuple(str(v) for v in d["channel_names"]),
                   {str(k): int(v) for k, v in d["labels"].items()},
                   tuple(CaseFingerprint.from_dict(c) for c in d["cases"]),
                   tuple(ChannelStats(**{k: float(v) for k, v in s.items()}) for s in d["channel_stats"]),
                   float(d["median_relative_cropped_size"]), str(d["digest"]))

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise Seg3dError("fingerprint file not found", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Seg3dError(f"not a valid fingerprint file ({e})", path) from None
        if not isinstance(d, dict) or d.get("schema_version") != FINGERPRINT_VERSION:
            raise Seg3dError(f"fingerprint schema version {d.get('schema_version') if isinstance(d, dict) else None}"
                             f" is not {FINGERPRINT_VERSION}; compute it again", path)
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise Seg3dError(f"not a valid fingerprint file ({type(e).__name__}: {e})", path) from None


# ---- measuring one case (runs in a worker process) ------------------------------------------------------

@dataclass(frozen=True)
class _Measured:
    case: CaseFingerprint
    samples: tuple[np.ndarray, ...]  # float32 per channel
    moments: tuple[tuple[int, float, float, float, float], ...]  # per channel: n, mean, M2, min, max


def measure_case(case_id: str, vox: CaseVoxels, max_samples: int) -> _Measured:
    """Fingerprint one case from voxels already read (by :func:`inspect_case`)."""
    reo = Reorientation.to_canonical(vox.geometry)
    geo = reo.geometry(vox.geometry)
    channels = [reo.apply(ch) for ch in vox.channels]  # views: permutation and flips only
    nonzero = np.zeros(geo.shape, dtype=bool)
    for ch in channels:
        nonzero |= ch != 0
    # Same box as crop.nonzero_mask (filling holes only adds voxels inside the box), without its cost.
    bbox = bbox_of(nonzero)
    fg = crop(reo.apply(vox.label), bbox) > 0
    n_fg = int(np.count_nonzero(fg))
    idx = None
    if n_fg > max_samples:  # fixed seed per case: the same dataset always gives the same fingerprint
        rng = np.random.default_rng(zlib.crc32(case_id.encode()))
        idx = np.sort(rng.choice(n_fg, size=max_samples, replace=False))
    samples, moments = [], []
    for ch in channels:
        values = crop(ch, bbox)[fg]
        moments.append(_moments(values))
        samples.append((values if idx is None else values[idx]).astype(np.float32))
    cropped = tuple(b - a for a, b in bbox)
    cf = CaseFingerprint(case_id, geo.spacing_zyx, geo.shape, cropped,
                         {int(k): int(v) for k, v in sorted(vox.label_counts.items())})
    return _Measured(cf, tuple(samples), tuple(moments))


def _moments(values: np.ndarray) -> tuple[int, float, float, float, float]:
    """n, mean, sum of squared deviations, min, max; float64 in slabs (no full float64 copy of a big CT)."""
    n = int(values.size)
    if n == 0:
        return 0, 0.0, 0.0, np.inf, -np.inf
    mean = float(np.mean(values, dtype=np.float64))
    m2 = 0.0
    for s in range(0, n, 1 << 22):
        d = values[s:s + (1 << 22)].astype(np.float64) - mean
        m2 += float(np.dot(d, d))
    return n, mean, m2, float(values.min()), float(values.max())


def _scan_one(item: tuple[Case, bool], spec: CaseSpec, max_samples: int, measure: bool = True):
    case, labelled = item
    problems, vox = inspect_case(case, spec, labelled=labelled, keep_voxels=labelled and measure)
    if problems or vox is None:
        return problems, None
    return [], measure_case(case.case_id, vox, max_samples)


# ---- dataset level --------------------------------------------------------------------------------------

DIGEST_SALT = f"seg3d-fingerprint v{FINGERPRINT_VERSION} samples {MAX_TOTAL_SAMPLES}\n"


def _combine(moments) -> tuple[int, float, float, float, float]:
    """Chan et al.'s pairwise update: exact mean/variance over all cases without holding their voxels."""
    n, mean, m2, lo, hi = 0, 0.0, 0.0, np.inf, -np.inf
    for nb, mb, m2b, lob, hib in moments:
        if nb == 0:
            continue
        delta = mb - mean
        tot = n + nb
        mean += delta * nb / tot
        m2 += m2b + delta * delta * n * nb / tot
        n, lo, hi = tot, min(lo, lob), max(hi, hib)
    return n, mean, m2, lo, hi


def _aggregate(ds: Dataset, measured: list[_Measured], digest: str) -> tuple[Fingerprint | None, list[Problem]]:
    stats = []
    for k, name in enumerate(ds.channel_names):
        n, mean, m2, lo, hi = _combine(m.moments[k] for m in measured)
        if n == 0:
            return None, [Problem(ds.root / "labelsTr" if ds.layout == "nnunetv2" else ds.dataset_json,
                                  "no label holds any foreground voxel (value > 0): nothing to learn")]
        sample = np.concatenate([m.samples[k] for m in measured])
        p_lo, med, p_hi = (float(v) for v in np.percentile(sample, [0.5, 50.0, 99.5]))
        stats.append(ChannelStats(mean=mean, std=float(np.sqrt(m2 / n)), median=med, min=lo, max=hi,
                                  p00_5=p_lo, p99_5=p_hi))
    cases = tuple(m.case for m in measured)
    rel = [float(np.prod(c.cropped_shape)) / float(np.prod(c.shape)) for c in cases]
    return Fingerprint(ds.name, ds.channel_names, dict(ds.labels), cases, tuple(stats),
                       float(np.median(rel)), digest), []


def _cached(cache_path: Path | None, digest: str) -> Fingerprint | None:
    if cache_path is None or not Path(cache_path).is_file():
        return None
    try:
        fp = Fingerprint.load(cache_path)
    except Seg3dError:
        return None  # unreadable or older format: measure again and overwrite it
    return fp if fp.digest == digest else None


def scan_dataset(dataset: Dataset | str | Path, workers: int | None = None, progress: ProgressFn | None = None,
                 cache_path: str | Path | None = None) -> tuple[list[Problem], Fingerprint | None]:
    """Check and fingerprint a dataset reading every file once: ``(problems, fingerprint or None)``.

    The fingerprint is None whenever there is a problem. With ``cache_path``, a saved fingerprint of the
    unchanged dataset is returned without reading any image (it was only saved from a dataset that passed
    every check, and the digest covers every file's name, size and modification time); a newly computed
    one is saved there. ``workers``: processes (None: all cores; 0 or 1: in this process).
    """
    ds, problems = load_or_problem(dataset)
    if ds is None:
        return problems, None
    problems = layout_problems(ds)
    digest = dataset_digest(ds, DIGEST_SALT)
    cache_path = Path(cache_path) if cache_path is not None else None
    cached = None if problems else _cached(cache_path, digest)
    if cached is not None:
        report(progress, len(ds.cases), len(ds.cases), f"dataset unchanged: reusing {cache_path}")
        return [], cached
    cases = unique_cases(ds.cases)
    items = [(c, True) for c in cases] + [(c, False) for c in expected_test_cases(ds)]
    max_samples = max(1, MAX_TOTAL_SAMPLES // max(1, len(cases)))
    fn = functools.partial(_scan_one, spec=spec_of(ds), max_samples=max_samples, measure=not problems)
    measured = []
    for case_problems, m in map_cases(fn, items, workers, progress, "cases"):
        problems.extend(case_problems)
        if m is not None:
            measured.append(m)
    if problems:
        return problems, None
    fp, problems = _aggregate(ds, measured, digest)
    if fp is not None and cache_path is not None:
        fp.save(cache_path)
    return problems, fp


def compute_fingerprint(dataset: Dataset | str | Path, workers: int | None = None,
                        progress: ProgressFn | None = None, cache_path: str | Path | None = None) -> Fingerprint:
    """The fingerprint of a dataset that passes every check; raises :class:`Seg3dError` listing the problems."""
    problems, fp = scan_dataset(dataset, workers=workers, progress=progress, cache_path=cache_path)
    if fp is None:
        raise problems_error(problems, dataset)
    return fp


def problems_error(problems: list[Problem], dataset, shown: int = 20) -> Seg3dError:
    """One error carrying every problem (the first ``shown`` spelled out), for callers that must stop."""
    root = dataset.root if isinstance(dataset, Dataset) else Path(dataset)
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (run `seg3d check {root}` for all)")
    return Seg3dError(f"the dataset has {len(problems)} problem(s):\n  " + "\n  ".join(lines), root)
