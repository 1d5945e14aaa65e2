"""Predict a folder on this machine: one model load, reading ahead and writing behind, resumable, never half a file.

A three-stage pipeline over :mod:`seg3d.inference.stages`: a reader thread reads and preprocesses the next
case while the network runs on the current one, and a writer thread maps the previous case's probabilities
back to its input grid and writes it. A broken input is recorded and skipped; the run finishes the others and
reports every failure. Each output is renamed into place only when complete, so ``--continue`` after a kill
redoes exactly the missing cases.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from seg3d.core.device import precision_warning
from seg3d.core.settings import PredictSettings, settings_from
from seg3d.inference import stages
from seg3d.inference.accounting import preflight
from seg3d.inference.predictor import Predictor
from seg3d.inference.stages import CaseRecord, Job
from seg3d.progress import LogFn, ProgressFn, log_info


def predict_folder(in_dir: str | Path, out_dir: str | Path, model_dir: str | Path | None,
                   settings: PredictSettings | None = None, *, predictor=None,
                   progress: ProgressFn | None = None, log: LogFn = log_info,
                   **overrides: Any) -> dict[str, Any]:
    """Predict every case of ``in_dir`` into ``out_dir`` (``<case><ending>``); returns a summary dict.

    ``settings`` (:class:`~seg3d.core.settings.PredictSettings`) with keyword ``overrides`` of its fields.
    ``predictor``: an already loaded :class:`~seg3d.inference.Predictor` (then ``model_dir`` is unused).
    The summary lists ``failed`` cases with the file and the problem; a manifest JSON with versions, settings
    and per-case timings is written to ``out_dir``. Raises :class:`Seg3dError` only for problems that stop the
    whole run (model folder, options, input folder).
    """
    settings = settings_from(PredictSettings, settings, overrides)
    t_start = time.perf_counter()
    started = stages.now()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for w in preflight(in_dir, out_dir):  # before any model is loaded
        log(f"warning: {w}")
    if predictor is None:
        predictor = Predictor(model_dir, settings, log=log)
        warning = precision_warning(predictor.precision, predictor.device) if predictor.backend == "torch" \
            else None
        if warning:
            log(f"warning: {warning}")
        if predictor.backend_note:
            log(predictor.backend_note)
    inventory = stages.list_inputs(in_dir, out_dir, predictor.plan.num_channels, settings,
                                   getattr(predictor.plan, "channel_names", None))
    records, failures = stages.open_run(inventory, out_dir, log)
    t_loop = time.perf_counter()
    try:
        _pipeline(inventory.todo, predictor, records, failures, progress, log)
        stages.finish_run(out_dir, settings)
    finally:
        seconds = time.perf_counter() - t_start
        manifest, note = stages.try_write_manifest(in_dir, out_dir, inventory, records, failures, settings,
                                                   predictor, started, seconds)
        if note:
            log(note)
    return stages.summarize(inventory, records, failures, seconds, time.perf_counter() - t_loop, manifest, note)


def _collect(tally: stages.Tally, job: Job, fut: Future) -> None:
    """The written case's record (a write that raised becomes a failure)."""
    try:
        tally.add(fut.result())
    except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
        tally.add(stages.failed_record(job, e))


def _pipeline(todo: list[Job], predictor, records: dict[str, CaseRecord], failures: list[CaseRecord],
              progress: ProgressFn | None, log: LogFn) -> None:
    """Read ahead (1 thread), predict here, write behind (1 thread); at most one case waits to be written."""
    tally = stages.Tally(len(todo), records, failures, progress, log)
    tally.report()
    with ThreadPoolExecutor(1, thread_name_prefix="seg3d-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="seg3d-write") as writer:
        pending: tuple[Job, Future] | None = None
        nxt = reader.submit(stages.read_job, todo[0], predictor) if todo else None
        for i, job in enumerate(todo):
            fut, nxt = nxt, (reader.submit(stages.read_job, todo[i + 1], predictor) if i + 1 < len(todo) else None)
            try:
                read = fut.result()
                probs = stages.predict_job(read, predictor)
                read.data = None  # the network input is no longer needed: bounded memory while writing
            except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
                tally.add(stages.failed_record(job, e))
                continue
            if pending is not None:
                _collect(tally, *pending)
            pending = (job, writer.submit(stages.write_job, read, probs, predictor))
            del read, probs
        if pending is not None:
            _collect(tally, *pending)
