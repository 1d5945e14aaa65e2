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

from seg3d.atomic import describe_os_error, storage_error, write_json_atomic, write_with_atomic
from seg3d.core.settings import PredictSettings
from seg3d.errors import Seg3dError
from seg3d.inference.accounting import account_inputs
from seg3d.inference.case_report import input_provenance, write_case_report, write_cohort_statistics
from seg3d.io.dicom import SeriesFilter, is_dicom_file
from seg3d.io.dicom_seg import reference_problem
from seg3d.io.dicom_source import DICOM_FORMAT, DicomListing, list_dicom_sources
from seg3d.io.image import ending_of, incomplete_reason
from seg3d.io.input_folder import InputIssue, list_case_folder
from seg3d.io.nifti import file_orientation_warnings
from seg3d.io.niigz import nonfinite_voxels
from seg3d.io.sources import CaseSource
from seg3d.io.writers import OutputContext, format_for_path, writer_for

DICOM_DEFAULT_FORMATS = ("nifti", "dicom-seg")  # a DICOM series' outputs when no --output-format is given


@dataclass(frozen=True)
class Job:
    """One case to predict: its source and every file it will produce."""

    source: CaseSource
    outputs: tuple[tuple[str, Path], ...]  # (writer format, path) per output format
    probabilities: Path | None = None  # <case>.npz with --save-probabilities
    notes: tuple[str, ...] = ()  # e.g. why a DICOM-SEG is not written for this case
    statistics: Path | None = None  # statistics/<case>.json with --statistics
    preview: Path | None = None  # previews/<case>.png with --preview

    @property
    def case_id(self) -> str:
        return self.source.case_id


@dataclass
class CaseRecord:
    """What happened to one input: ``ok``, ``skipped`` (output already complete) or ``failed``.

    ``kind`` says why a case failed (``input``: reading it; ``output``: writing it, e.g. no space left;
    listing kinds: ``ambiguous``, ``name``, ``channels``, ``unreadable``); ``notes``: what of the input's
    header a writer could not keep; ``warnings``: about the input (e.g. its qform and sform disagree).
    """

    case: str | None
    status: str
    output: str | None = None
    error: str | None = None
    path: str | None = None  # the file a failure is about
    seconds: dict[str, float] = field(default_factory=dict)
    kind: str | None = None
    notes: list[str] = field(default_factory=list)  # one line each: what an output could not keep, or lacks
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)  # input identity, model checksum, outputs
    extra: dict[str, Any] = field(default_factory=dict)  # a runner's own facts (Ray: worker, attempts, retries)

    def manifest_entry(self) -> dict[str, Any]:
        extra = {k: v for k, v in (("notes", self.notes), ("warnings", self.warnings)) if v}
        if self.status == "ok":
            entry = {"case": self.case, "status": "ok", "output": self.output,
                     "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, **extra, **self.provenance}
        elif self.status == "skipped":
            entry = {"case": self.case, "status": "skipped", "output": self.output}
        else:
            entry = {"case": self.case, "status": "failed", "error": self.error, "kind": self.kind, **extra}
        return {**entry, **self.extra}

    def failure(self) -> dict[str, Any]:
        return {"case": self.case, "path": self.path, "error": self.error, "kind": self.kind}


@dataclass
class Inventory:
    """Every input of a run (of this part): jobs to do, complete outputs skipped, files that are no case."""

    case_ids: list[str]  # the cases of this part, sorted
    todo: list[Job]
    skipped: list[CaseRecord]
    failed: list[CaseRecord]  # listing problems (reported by part 0 only)
    issues: list[InputIssue] = field(default_factory=list)  # every file that is no case, why (part 0 only)
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # case id -> its input files (this part)
    redo: dict[str, str] = field(default_factory=dict)  # case id -> why its existing output is redone
    in_dir: Path | None = None


@dataclass
class ReadCase:
    """A job read and preprocessed: the network input, how to go back, the timings so far."""

    job: Job
    data: Any  # (C, *shape) float32 on the preprocessed grid
    props: Any  # CaseProperties
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # about the input files, naming them
    image: Any = None  # the input (C, z, y, x) on its own grid, kept for --statistics / --preview


# --- listing ---------------------------------------------------------------------------------------------

def list_input_cases(in_dir: Path, num_channels: int) -> tuple[dict[str, list[Path]], list[tuple[str | None, Path, str]]]:
    """Cases ``{case_id: channel files in order}`` and failures ``[(case_id, path, message)]`` found while listing
    (:func:`seg3d.io.input_folder.list_case_folder` also says what was skipped and why)."""
    listing = list_case_folder(in_dir, num_channels)
    failed = [(i.case_id, i.paths[0], i.reason if len(i.paths) == 1 else i.message) for i in listing.issues
              if i.status == "failed"]
    return {c: list(p) for c, p in listing.cases.items()}, failed


def split_parts(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """Every ``num_parts``-th case of the sorted list starting at ``part_id``: disjoint, together all."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise Seg3dError(f"--part-id must be in 0..{num_parts - 1} and --num-parts >= 1 "
                         f"(got part {part_id} of {num_parts})")
    return sorted(case_ids)[part_id::num_parts]


def output_paths(source: CaseSource, out_dir: Path, formats: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """``(format, out_dir/<case><ending>)`` per output format; no formats: the input's own format and ending
    (a DICOM series: NIfTI and DICOM-SEG)."""
    if not formats and source.format == DICOM_FORMAT:
        formats = DICOM_DEFAULT_FORMATS
    if not formats:
        return ((format_for_path(source.reference), out_dir / f"{source.case_id}{source.ending}"),)
    return tuple((f, out_dir / f"{source.case_id}{writer_for(f).ending}") for f in formats)


def case_formats(source, formats: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The formats this case can be written in, and one note per format it cannot.

    A DICOM-SEG needs a DICOM series with UIDs; a series without them still gets its NIfTI.

    Raises:
        Seg3dError: nothing of ``formats`` can be written for this case.
    """
    if not formats and source.format == DICOM_FORMAT:
        formats = DICOM_DEFAULT_FORMATS
    if "dicom-seg" not in formats:
        return formats, []
    if source.format != DICOM_FORMAT:
        why = f"no DICOM-SEG for '{source.case_id}': its input is not a DICOM series"
    else:
        why = reference_problem(source.series)
    if why is None:
        return formats, []
    kept = tuple(f for f in formats if f != "dicom-seg")
    if not kept and source.format == DICOM_FORMAT:
        kept = ("nifti",)
    if not kept:
        raise Seg3dError(f"{why}; choose another --output-format", source.reference)
    return kept, [why]


def probabilities_path(out: Path) -> Path:
    """``<case>.npz`` beside the mask ``<case><ending>``."""
    e = ending_of(out.name) or ""
    return out.with_name(out.name[: len(out.name) - len(e)] + ".npz")


def output_complete(out_path: Path, expected_size: tuple[int, ...]) -> bool:
    """An existing output that fully decodes with the input's size (see :func:`seg3d.io.image.incomplete_reason`);
    a DICOM-SEG (``.dcm``): a DICOM file with the series' rows and columns."""
    if not out_path.is_file():
        return False
    if out_path.name.lower().endswith(".dcm"):
        return is_dicom_file(out_path) and _dicom_size(out_path) == tuple(expected_size[:2])
    return incomplete_reason(out_path, expected_size) is None


def _dicom_size(path: Path) -> tuple[int, int] | None:
    import pydicom  # the dicom extra; only for DICOM-SEG outputs

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:  # noqa: BLE001 - anything unreadable is incomplete
        return None


def job_incomplete(job: Job) -> str | None:
    """Why ``job``'s outputs are not all complete (``"missing"`` when one does not exist); None when they are.

    Complete: every output fully decodes with the input's size, the probabilities file (if asked for) is a
    whole ``.npz``, and the statistics/preview files asked for exist (``--continue``).
    """
    if not all(p.is_file() for _, p in job.outputs):
        return "missing"
    if any(p is not None and not p.is_file() for p in (job.statistics, job.preview)):
        return "missing"
    try:
        size = job.source.size()
    except Seg3dError:
        return "the input cannot be read"
    for _, p in job.outputs:
        if not output_complete(p, size):
            why = incomplete_reason(p, size) if not p.name.lower().endswith(".dcm") else "not a whole DICOM-SEG"
            return f"{p}: {why or 'incomplete'}"
    if job.probabilities is not None and not _npz_complete(job.probabilities):
        return f"{job.probabilities}: missing or incomplete"
    return None


def job_complete(job: Job) -> bool:
    """Every output of ``job`` is complete (see :func:`job_incomplete`)."""
    return job_incomplete(job) is None


def _npz_complete(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and {"probabilities.npy", "label_values.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def list_inputs(in_dir: str | Path, out_dir: str | Path, num_channels: int, settings: PredictSettings,
                channel_names: tuple[str, ...] | None = None) -> Inventory:
    """Every input file of ``in_dir`` accounted for: jobs of this part, complete outputs (``continue_``)
    skipped, and files that cannot be a case (named; part 0 reports them).

    Image files ``<case>_XXXX<ending>`` at the top of ``in_dir``, and DICOM series anywhere below it
    (:mod:`seg3d.io.dicom`; ``settings.series_filter`` picks them; ``channel_names`` checks their modality).

    Raises:
        Seg3dError: the input folder is missing, an option is invalid, or an output would overwrite its input.
    """
    from seg3d.inference.case_report import preview_path, statistics_path

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for f in settings.output_formats:
        writer_for(f)  # an unknown format fails before any work
    series_filter = SeriesFilter.parse(settings.series_filter)
    listing = list_case_folder(in_dir, num_channels, exclude=(out_dir,))
    cases: dict[str, tuple[Path, ...]] = dict(listing.cases)
    dicom = list_dicom_sources(in_dir, channel_names or ("",) * num_channels, series_filter,
                               taken_ids=set(cases), exclude=out_dir)
    sources: dict[str, Any] = {cid: CaseSource.from_files(cid, paths) for cid, paths in cases.items()}
    sources.update({s.case_id: s for s in dicom.sources})
    cases.update({s.case_id: tuple(s.channels) for s in dicom.sources})
    all_issues = _merge_dicom_issues(list(listing.issues), dicom, Path(out_dir))
    if not cases and not all_issues:
        raise Seg3dError("the input folder is empty", in_dir)
    ids = split_parts(list(sources), settings.num_parts, settings.part_id)
    issues = all_issues if settings.part_id == 0 else []  # each part would list them again
    failed = [CaseRecord(i.case_id, "failed", error=i.reason if i.kind == "dicom" else i.message,
                         path=str(i.paths[0]), kind=i.kind) for i in issues if i.status == "failed"]
    todo: list[Job] = []
    skipped: list[CaseRecord] = []
    redo: dict[str, str] = {}
    for cid in ids:
        source = sources[cid]
        try:
            formats, notes = case_formats(source, settings.output_formats)
        except Seg3dError as e:
            failed.append(CaseRecord(cid, "failed", error=str(e), path=str(source.reference), kind="output format"))
            continue
        outputs = output_paths(source, out_dir, formats)
        inputs = {p.resolve() for p in source.channels}
        for _, out in outputs:
            if out.resolve() in inputs:
                raise Seg3dError("the output would overwrite its input: choose another output folder", out)
        job = Job(source, outputs, probabilities_path(outputs[0][1]) if settings.save_probabilities else None,
                  tuple(notes), statistics_path(out_dir, cid) if settings.statistics else None,
                  preview_path(out_dir, cid) if settings.preview else None)
        if settings.continue_:
            why = job_incomplete(job)
            if why is None:
                skipped.append(CaseRecord(cid, "skipped", output=str(outputs[0][1])))
                continue
            if why != "missing":
                redo[cid] = why
        todo.append(job)
    return Inventory(ids, todo, skipped, failed, issues, {c: cases[c] for c in ids}, redo, in_dir)


def _merge_dicom_issues(issues: list[InputIssue], dicom: DicomListing, out_dir: Path) -> list[InputIssue]:
    """The top-level listing's issues with the recursive DICOM listing folded in, each file once.

    A top-level file that belongs to a DICOM series is an input, not "not an image"; a subfolder holding DICOM
    series is accounted file by file (its series, and its other files as skipped), not as one skipped folder;
    series the model cannot take and unreadable DICOM files are failures naming the series or file.
    """
    used = {p for s in dicom.sources for p in s.channels}
    top = {p for i in issues for p in i.paths}
    # what the DICOM listing placed (series files, refused series' files, unreadable files), built once
    placed = used | {p for _, p, _ in dicom.problems} | {p for fs in dicom.refused_files.values() for p in fs}

    def holds(folder: Path) -> bool:
        return any(folder in q.parents for q in placed)

    out = [i for i in issues
           if not (i.kind == "not an image" and i.paths[0] in used)
           and not (i.kind == "folder" and i.paths[0] != out_dir and holds(i.paths[0]))]
    kept_folders = [i.paths[0] for i in out if i.kind == "folder"]
    for p, why in dicom.skipped:
        if p not in top and not any(f in p.parents for f in kept_folders):
            out.append(InputIssue("skipped", "not DICOM", (p,), why))
    for cid, p, why in dicom.problems:  # a refused series: each of its files, one failure naming the series
        out.append(InputIssue("failed", "dicom", dicom.refused_files.get(cid, (p,)), f"{p}: {why}", cid))
    return out


# --- one case ----------------------------------------------------------------------------------------------

def read_job(job: Job, predictor) -> ReadCase:
    """Read the job's channels and preprocess them (reader thread / worker)."""
    t0 = time.perf_counter()
    data, geometry = job.source.read(predictor.plan.num_channels)
    _check_finite(job.source, data)
    t1 = time.perf_counter()
    pdata, props = predictor.preprocess(data, geometry, where=job.source.reference)
    warnings = [f"{p}: {w}" for p in job.source.channels for w in file_orientation_warnings(p, geometry)]
    keep = job.statistics is not None or job.preview is not None
    return ReadCase(job, pdata, props, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}, warnings,
                    image=data if keep else None)


def _check_finite(source: CaseSource, data: np.ndarray) -> None:
    """NaN/Inf voxels fail the case naming the file, in every format: SimpleITK reads a NIfTI's as 0, so for
    NIfTI the stored voxels are counted (see :func:`seg3d.io.niigz.nonfinite_voxels`)."""
    for c in range(data.shape[0]):
        path = source.channels[0 if source.four_d else min(c, len(source.channels) - 1)]
        bad = int(data[c].size - np.count_nonzero(np.isfinite(data[c])))
        if not bad and (c == 0 or not source.four_d) and ending_of(path.name) is not None:
            bad = nonfinite_voxels(path)
        if bad:
            raise Seg3dError(f"{bad} voxel(s) are NaN or infinite", path)


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
    context = output_context(predictor)
    geometry = read.props.geometry
    notes: list[str] = list(job.notes)
    for fmt, path in job.outputs:
        notes += [f"{path}: {n}" for n in writer_for(fmt).write(labels, geometry, job.source, path, context) or ()]
    if p is not None:
        write_probabilities(job.probabilities, p, predictor.label_values)
    seconds = {**read.seconds, "export": t1 - t0, "write": time.perf_counter() - t1}
    extras = {}
    if job.statistics is not None or job.preview is not None:
        t2 = time.perf_counter()
        extras = write_case_report(job.outputs[0][1].parent, job.case_id, read.image, labels, geometry,
                                   context.labels, statistics=job.statistics is not None,
                                   preview=job.preview is not None, source_name=str(job.source.reference))
        read.image = None
        seconds["report"] = time.perf_counter() - t2
    provenance = {"input": input_provenance(job.source), "model_checksum": context.model_checksum,
                  "outputs": [{"path": str(path), "format": fmt} for fmt, path in job.outputs]
                  + ([{"path": str(job.probabilities), "format": "probabilities-npz"}] if p is not None else [])
                  + [{"path": path, "format": kind} for kind, path in extras.items()]}
    return CaseRecord(job.case_id, "ok", output=str(job.outputs[0][1]), seconds=seconds, notes=notes,
                      warnings=list(read.warnings), provenance=provenance)


def output_context(predictor) -> OutputContext:
    """The class names and model identity writers record (``predictor.output_context()`` where it has one)."""
    if hasattr(predictor, "output_context"):
        return predictor.output_context()
    from seg3d import __version__  # stand-in predictors (tests, other runtimes) without a model folder

    return OutputContext({"background": 0, **{f"class_{v}": int(v) for v in predictor.label_values if v}},
                         seg3d_version=__version__)


def finish_run(out_dir: Path, settings: PredictSettings) -> Path | None:
    """After the cases: the cohort ``statistics.csv`` from every case's statistics (``--statistics``)."""
    return write_cohort_statistics(Path(out_dir)) if settings.statistics else None


def failed_record(job: Job, err: BaseException) -> CaseRecord:
    """A failed case: the user's problem as it was raised, storage trouble naming the output file, anything
    else named an internal error. ``kind``: ``output`` when writing failed, else ``input``."""
    outputs = {str(p) for _, p in job.outputs} | ({str(job.probabilities)} if job.probabilities else set())
    if isinstance(err, Seg3dError):
        msg = str(err)
    elif isinstance(err, OSError):  # storage trouble a writer did not name
        msg = f"{job.outputs[0][1]}: {describe_os_error(err)}"
    else:
        msg = f"internal error ({type(err).__name__}: {err})"
    path = str(err.path) if isinstance(err, Seg3dError) and err.path else str(job.source.reference)
    kind = "output" if path in outputs or isinstance(err, OSError) else "input"
    return CaseRecord(job.case_id, "failed", error=msg, path=path, kind=kind)


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

    try:
        write_with_atomic(path, writer)
    except OSError as e:
        raise storage_error(path, e) from None


# --- the run -----------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Versions a manifest records: seg3d, Python and the libraries a prediction runs on.

    The optional ones (MONAI, OpenVINO) are read from the installed package metadata, not imported: importing
    MONAI just for its version cost 3-8 s of every ``seg3d predict`` (more than predicting 10 hippocampus cases
    with one network).
    """
    from importlib import metadata

    import SimpleITK
    import torch

    from seg3d import __version__

    out = {"seg3d": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "simpleitk": SimpleITK.Version_VersionString()}
    for dist in ("monai", "openvino"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
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
                "output_formats": list(settings.output_formats), "statistics": settings.statistics,
                "preview": settings.preview, "series_filter": list(settings.series_filter), **predictor.describe(),
                "cases": [records[c].manifest_entry() for c in inventory.case_ids if c in records],
                "failures": [f.failure() for f in failures]}
    inputs, counts = account_inputs(inventory.issues, inventory.files, records)
    manifest.update(input_counts=counts, inputs=inputs)
    path = Path(out_dir) / manifest_name(settings)
    write_json_atomic(path, manifest)
    return path


def open_run(inventory: Inventory, out_dir: Path, log: Callable[[str], None]) -> tuple[dict[str, CaseRecord],
                                                                                      list[CaseRecord]]:
    """Every runner's start after listing: the output folder created (a storage failure names it), the outputs
    to redo logged, and the records so far: ``({case: record} of skipped and listing-failed cases, failures)``."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(Path(out_dir), e, "cannot create the output folder") from None
    for cid, why in inventory.redo.items():
        log(f"redoing {why} (an incomplete output of case '{cid}')")
    records: dict[str, CaseRecord] = {r.case: r for r in inventory.skipped}
    records.update({r.case: r for r in inventory.failed if r.case in inventory.files})  # e.g. no writer fits
    return records, list(inventory.failed)


def try_write_manifest(in_dir: Path, out_dir: Path, inventory: Inventory, records: dict[str, CaseRecord],
                       failures: list[CaseRecord], settings: PredictSettings, predictor, started: str,
                       seconds: float) -> tuple[Path | None, str | None]:
    """:func:`write_manifest`, but storage trouble becomes one line: ``(path, None)`` or ``(None, note)``."""
    try:
        return write_manifest(in_dir, out_dir, inventory, records, failures, settings, predictor, started,
                              seconds), None
    except OSError as e:
        path = Path(out_dir) / manifest_name(settings)
        return None, f"note: the manifest {path} could not be written: {describe_os_error(e)}"


def summarize(inventory: Inventory, records: dict[str, CaseRecord], failures: list[CaseRecord],
              seconds: float, loop_seconds: float, manifest: Path | None,
              manifest_note: str | None = None) -> dict[str, Any]:
    """The run's summary: case counts, every failure (case, file, message), seconds per case, the manifest
    (or the note saying it could not be written), and every input file with its status (``inputs``) and the
    counts, which add up to the files of the input folder (``input_counts``)."""
    ok = [r for r in records.values() if r.status == "ok"]
    net = [r.seconds["network"] for r in ok]
    inputs, counts = account_inputs(inventory.issues, inventory.files, records)
    return {"total": len(inventory.case_ids) + sum(1 for i in inventory.issues if i.status == "failed"),
            "predicted": len(ok), "skipped": sum(1 for r in records.values() if r.status == "skipped"),
            "failed": [f.failure() for f in failures], "seconds": seconds,
            "notes": [n for c in inventory.case_ids if c in records for n in records[c].notes],
            "seconds_per_case": loop_seconds / len(ok) if ok else None,
            "network_seconds_per_case": float(np.mean(net)) if net else None,
            "manifest": None if manifest is None else str(manifest), "manifest_note": manifest_note,
            "input_dir": None if inventory.in_dir is None else str(inventory.in_dir),
            "input_counts": counts, "inputs": inputs}


@dataclass
class Tally:
    """The records of a run as its cases finish, and the progress report every runner (local, Ray) gives:
    ``progress(done, total, "<rate> cases/s, ETA m:ss[, <note>]")``; failures, input warnings and output notes
    are also logged as they happen."""

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
            for line in ([f"failed: {rec.error}"] if rec.status == "failed" else []) + \
                    [f"warning: {w}" for w in rec.warnings] + [f"note: {n}" for n in rec.notes]:
                self.log(line)
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
