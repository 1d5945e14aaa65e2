"""The batch stages: plain functions over one case, shared by every runner (local threads, a cluster).

``list_inputs`` accounts for every input file (jobs to do, outputs already complete, files that cannot be a
case); then per job ``read_job`` (read + preprocess), ``predict_job`` (the network), ``write_job`` (back to
the input grid, post-process, write every output atomically), or ``run_job`` for all three in one call;
finally ``write_manifest`` and ``summarize``. A runner decides only where and in which order they run.

The predictor is anything with the :class:`~seg3d.inference.predictor.Predictor` interface used here:
``plan.num_channels``, ``label_values``, ``preprocess``, ``predict_preprocessed``, ``export``, ``describe``.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.atomic import write_json_atomic, write_with_atomic
from seg3d.core.settings import PredictSettings
from seg3d.errors import Seg3dError
from seg3d.io.image import ending_of, read_header
from seg3d.io.layout import group_channel_files
from seg3d.io.sources import CaseSource
from seg3d.io.writers import format_for_path, writer_for


@dataclass(frozen=True)
class Job:
    """One case to predict: its source and every file it will produce."""

    source: CaseSource
    outputs: tuple[tuple[str, Path], ...]  # (writer format, path) per output format
    probabilities: Path | None = None  # <case>.npz with --save-probabilities

    @property
    def case_id(self) -> str:
        return self.source.case_id


@dataclass
class CaseRecord:
    """What happened to one input: ``ok``, ``skipped`` (output already complete) or ``failed``."""

    case: str | None
    status: str
    output: str | None = None
    error: str | None = None
    path: str | None = None  # the file a failure is about
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # a runner's own facts (Ray: worker, attempts, retries)

    def manifest_entry(self) -> dict[str, Any]:
        if self.status == "ok":
            entry = {"case": self.case, "status": "ok", "output": self.output,
                     "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}
        elif self.status == "skipped":
            entry = {"case": self.case, "status": "skipped", "output": self.output}
        else:
            entry = {"case": self.case, "status": "failed", "error": self.error}
        return {**entry, **self.extra}

    def failure(self) -> dict[str, Any]:
        return {"case": self.case, "path": self.path, "error": self.error}


@dataclass
class Inventory:
    """Every input of a run (of this part): jobs to do, complete outputs skipped, files that are no case."""

    case_ids: list[str]  # the cases of this part, sorted
    todo: list[Job]
    skipped: list[CaseRecord]
    failed: list[CaseRecord]  # listing problems (reported by part 0 only)


@dataclass
class ReadCase:
    """A job read and preprocessed: the network input, how to go back, the timings so far."""

    job: Job
    data: Any  # (C, *shape) float32 on the preprocessed grid
    props: Any  # CaseProperties
    seconds: dict[str, float]


# --- listing ---------------------------------------------------------------------------------------------

def list_input_cases(in_dir: Path, num_channels: int) -> tuple[dict[str, list[Path]], list[tuple[str | None, Path, str]]]:
    """Cases ``{case_id: channel files in order}`` and problems ``[(case_id, path, message)]`` found while listing."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise Seg3dError("input folder not found", in_dir)
    groups = group_channel_files(in_dir, num_channels)
    used = {p for paths in groups.values() for p in paths}
    problems: list[tuple[str | None, Path, str]] = []
    for p in sorted(in_dir.iterdir()):
        e = ending_of(p.name)
        if p.is_file() and not p.name.startswith(".") and e and p not in used:
            problems.append((None, p, f"file name does not follow <case>_XXXX{e} (the model has "
                                      f"{num_channels} channels)"))
    cases: dict[str, list[Path]] = {}
    for cid, paths in sorted(groups.items()):
        by_channel = {}
        for p in paths:
            stem = p.name[: -len(ending_of(p.name) or "")]
            suffixed = stem != cid  # <case>_XXXX, or a plain <case> file for one-channel models
            by_channel[int(stem[-4:]) if suffixed else 0] = p
        want = list(range(num_channels))
        if sorted(by_channel) != want:
            problems.append((cid, paths[0], f"case '{cid}' has channel file(s) {sorted(by_channel)}, the model "
                                            f"expects exactly {want} (<case>_0000 ... _{num_channels - 1:04d})"))
            continue
        cases[cid] = [by_channel[c] for c in want]
    return cases, problems


def split_parts(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """Every ``num_parts``-th case of the sorted list starting at ``part_id``: disjoint, together all."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise Seg3dError(f"--part-id must be in 0..{num_parts - 1} and --num-parts >= 1 "
                         f"(got part {part_id} of {num_parts})")
    return sorted(case_ids)[part_id::num_parts]


def output_paths(source: CaseSource, out_dir: Path, formats: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """``(format, out_dir/<case><ending>)`` per output format; no formats: the input's own format and ending."""
    if not formats:
        return ((format_for_path(source.reference), out_dir / f"{source.case_id}{source.ending}"),)
    return tuple((f, out_dir / f"{source.case_id}{writer_for(f).ending}") for f in formats)


def probabilities_path(out: Path) -> Path:
    """``<case>.npz`` beside the mask ``<case><ending>``."""
    e = ending_of(out.name) or ""
    return out.with_name(out.name[: len(out.name) - len(e)] + ".npz")


def output_complete(out_path: Path, expected_size: tuple[int, ...]) -> bool:
    """An existing output that opens and has the input's size (partial files never carry the final name)."""
    if not out_path.is_file():
        return False
    try:
        return read_header(out_path).geometry.size == tuple(expected_size)
    except Seg3dError:
        return False


def job_complete(job: Job) -> bool:
    """Every output of ``job`` exists, opens, and has the input's size (``--continue``)."""
    try:
        size = job.source.size()
    except Seg3dError:
        return False
    if job.probabilities is not None and not job.probabilities.is_file():
        return False
    return all(output_complete(p, size) for _, p in job.outputs)


def list_inputs(in_dir: str | Path, out_dir: str | Path, num_channels: int, settings: PredictSettings) -> Inventory:
    """Every input file of ``in_dir`` accounted for: jobs of this part, complete outputs (``continue_``)
    skipped, and files that cannot be a case (named; part 0 reports them).

    Raises:
        Seg3dError: the input folder is missing, or an output would overwrite its input.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for f in settings.output_formats:
        writer_for(f)  # an unknown format fails before any work
    cases, problems = list_input_cases(in_dir, num_channels)
    ids = split_parts(list(cases), settings.num_parts, settings.part_id)
    failed = [CaseRecord(c, "failed", error=f"{p}: {m}", path=str(p)) for c, p, m in problems] \
        if settings.part_id == 0 else []
    todo: list[Job] = []
    skipped: list[CaseRecord] = []
    for cid in ids:
        source = CaseSource.from_files(cid, cases[cid])
        outputs = output_paths(source, out_dir, settings.output_formats)
        inputs = {p.resolve() for p in source.channels}
        for _, out in outputs:
            if out.resolve() in inputs:
                raise Seg3dError("the output would overwrite its input: choose another output folder", out)
        job = Job(source, outputs, probabilities_path(outputs[0][1]) if settings.save_probabilities else None)
        if settings.continue_ and job_complete(job):
            skipped.append(CaseRecord(cid, "skipped", output=str(outputs[0][1])))
            continue
        todo.append(job)
    return Inventory(ids, todo, skipped, failed)


# --- one case ----------------------------------------------------------------------------------------------

def read_job(job: Job, predictor) -> ReadCase:
    """Read the job's channels and preprocess them (reader thread / worker)."""
    t0 = time.perf_counter()
    data, geometry = job.source.read(predictor.plan.num_channels)
    t1 = time.perf_counter()
    pdata, props = predictor.preprocess(data, geometry, where=job.source.reference)
    return ReadCase(job, pdata, props, {"read": t1 - t0, "preprocess": time.perf_counter() - t1})


def predict_job(read: ReadCase, predictor):
    """The network on a read case: probabilities on the preprocessed grid (on the compute device)."""
    t0 = time.perf_counter()
    probs = predictor.predict_preprocessed(read.data)
    read.seconds["network"] = time.perf_counter() - t0
    return probs


def write_job(read: ReadCase, probs, predictor) -> CaseRecord:
    """Probabilities back to the input grid, post-processed, written atomically by each output's writer."""
    job = read.job
    t0 = time.perf_counter()
    labels, p = predictor.export(probs, read.props, probabilities=job.probabilities is not None)
    t1 = time.perf_counter()
    for fmt, path in job.outputs:
        writer_for(fmt).write(labels, read.props.geometry, job.source, path)
    if p is not None:
        write_probabilities(job.probabilities, p, predictor.label_values)
    seconds = {**read.seconds, "export": t1 - t0, "write": time.perf_counter() - t1}
    return CaseRecord(job.case_id, "ok", output=str(job.outputs[0][1]), seconds=seconds)


def failed_record(job: Job, err: BaseException) -> CaseRecord:
    """A failed case: the user's problem as it was raised, anything else named an internal error."""
    msg = str(err) if isinstance(err, Seg3dError) else f"internal error ({type(err).__name__}: {err})"
    path = str(err.path) if isinstance(err, Seg3dError) and err.path else str(job.source.reference)
    return CaseRecord(job.case_id, "failed", error=msg, path=path)


def run_job(predictor, job: Job) -> CaseRecord:
    """Read, predict and write one case in this thread; a failure becomes a ``failed`` record."""
    try:
        read = read_job(job, predictor)
        return write_job(read, predict_job(read, predictor), predictor)
    except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
        return failed_record(job, e)


def write_probabilities(path: Path, probs: np.ndarray, label_values) -> None:
    """``probabilities`` (K, z, y, x) float16 in the input's array order and the ``label_values`` of K, written
    atomically (``seg3d predict --save-probabilities`` and the fold validation, whose files score ensembles)."""
    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=np.asarray(probs).astype(np.float16, copy=False),
                                label_values=np.asarray(label_values))

    write_with_atomic(path, writer)


# --- the run -----------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Versions a manifest records."""
    import SimpleITK
    import torch

    from seg3d import __version__

    out = {"seg3d": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "simpleitk": SimpleITK.Version_VersionString()}
    try:
        import monai

        out["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def manifest_name(settings: PredictSettings) -> str:
    n, k = settings.num_parts, settings.part_id
    return "predict_manifest.json" if n == 1 else f"predict_manifest_part{k}of{n}.json"


def write_manifest(in_dir: Path, out_dir: Path, inventory: Inventory, records: dict[str, CaseRecord],
                   failures: list[CaseRecord], settings: PredictSettings, predictor, started: str,
                   seconds: float) -> Path:
    """``predict_manifest.json`` (or ``_partKofN``): versions, settings, every case's record and every failure."""
    manifest = {"started": started, "finished": now(), "seconds": round(seconds, 3), "versions": versions(),
                "input_dir": str(Path(in_dir).resolve()), "output_dir": str(Path(out_dir).resolve()),
                "num_parts": settings.num_parts, "part_id": settings.part_id, "continue": settings.continue_,
                "save_probabilities": settings.save_probabilities,
                "output_formats": list(settings.output_formats), **predictor.describe(),
                "cases": [records[c].manifest_entry() for c in inventory.case_ids if c in records],
                "failures": [f.failure() for f in failures]}
    path = Path(out_dir) / manifest_name(settings)
    write_json_atomic(path, manifest)
    return path


def summarize(inventory: Inventory, records: dict[str, CaseRecord], failures: list[CaseRecord],
              seconds: float, loop_seconds: float, manifest: Path) -> dict[str, Any]:
    """The run's summary: counts, every failure (case, file, message), seconds per case, the manifest."""
    ok = [r for r in records.values() if r.status == "ok"]
    net = [r.seconds["network"] for r in ok]
    return {"total": len(inventory.case_ids), "predicted": len(ok),
            "skipped": sum(1 for r in records.values() if r.status == "skipped"),
            "failed": [f.failure() for f in failures], "seconds": seconds,
            "seconds_per_case": loop_seconds / len(ok) if ok else None,
            "network_seconds_per_case": float(np.mean(net)) if net else None, "manifest": str(manifest)}


@dataclass
class Tally:
    """The records of a run as its cases finish, and the progress report every runner gives:
    ``progress(done, total, "<rate> cases/s, ETA m:ss[, <note>]")``; failures are also logged as they happen."""

    total: int
    records: dict[str, CaseRecord]
    failures: list[CaseRecord]
    progress: Callable[[int, int, str], None] | None = None
    log: Callable[[str], None] | None = None
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, rec: CaseRecord, note: str = "") -> None:
        """Keep ``rec`` (a failure also in ``failures``, and logged) and report progress."""
        self.records[rec.case] = rec
        if rec.status == "failed":
            self.failures.append(rec)
            if self.log:
                self.log(f"failed: {rec.error}")
        self.done += 1
        self.report(note)

    def report(self, note: str = "") -> None:
        """Report progress now (also between cases, so the ETA keeps moving on long cases)."""
        if self.progress is None:
            return
        if not self.done:
            self.progress(0, self.total, note)
            return
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        left = round((self.total - self.done) / rate)
        eta = f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}" if left >= 3600 else \
            f"{left // 60}:{left % 60:02d}"
        self.progress(self.done, self.total, f"{rate:.2f} cases/s, ETA {eta}" + (f", {note}" if note else ""))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
