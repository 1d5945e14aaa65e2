"""Predict a folder of cases: one model load, reading ahead and writing behind, resumable, never half a file.

A three-stage pipeline: a reader thread loads and preprocesses the next case while the network runs on the
current one, and a writer thread maps the previous case's probabilities back to its input grid and writes it.
A broken input is recorded and skipped; the run finishes the others and reports every failure. Each output
is renamed into place only when complete, so ``--continue`` after a kill redoes exactly the missing cases.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.atomic import describe_os_error, storage_error, write_with_atomic
from seg3d.errors import Seg3dError
from seg3d.inference.accounting import account_inputs, issue_failure, preflight, write_manifest_or_note
from seg3d.inference.export import write_like
from seg3d.io.image import SUPPORTED_ENDINGS, incomplete_reason, read_header
from seg3d.io.input_folder import list_case_folder
from seg3d.io.layout import Case, read_case_images
from seg3d.io.nifti import file_orientation_warnings
from seg3d.progress import ProgressFn, report


def _ending(name: str) -> str | None:
    low = name.lower()
    return next((e for e in SUPPORTED_ENDINGS if low.endswith(e)), None)


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


def output_complete(out_path: Path, expected_size: tuple[int, ...]) -> bool:
    """An existing output that fully decodes with the input's size (see :func:`seg3d.io.image.incomplete_reason`)."""
    return out_path.is_file() and incomplete_reason(out_path, expected_size) is None


def _existing_output_problem(out: Path, input_path: Path, probabilities: Path | None) -> str | None:
    """None when ``out`` (and ``probabilities``) are complete outputs for ``input_path``, else why not."""
    if not out.is_file():
        return "missing"
    try:
        size = read_header(input_path).geometry.size
    except Seg3dError:
        return "the input cannot be read"
    why = incomplete_reason(out, size)
    if why is None and probabilities is not None and not _npz_complete(probabilities):
        why = f"{probabilities.name} is missing or incomplete"
    return why


def _npz_complete(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and {"probabilities.npy", "label_values.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _versions() -> dict[str, str]:
    import SimpleITK
    import torch

    import seg3d

    out = {"seg3d": seg3d.__version__, "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "simpleitk": SimpleITK.Version_VersionString()}
    try:
        import monai

        out["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def predict_folder(in_dir: str | Path, out_dir: str | Path, model_dir: str | Path,
                   folds: str | list = "all-available", tta: bool = True, step: float = 0.5,
                   device: str = "auto", save_probabilities: bool = False, postprocess: bool = True,
                   continue_: bool = False, num_parts: int = 1, part_id: int = 0,
                   progress: ProgressFn | None = None, config: str | None = None, checkpoint: str = "final",
                   precision: str = "auto", predictor=None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict every case of ``in_dir`` into ``out_dir`` (``<case><ending>``); returns a summary dict.

    The summary lists ``failed`` cases with the file and the problem; a manifest JSON with versions,
    settings and per-case timings is written to ``out_dir``. Raises :class:`Seg3dError` only for problems
    that stop the whole run (model folder, options, input folder).
    """
    from seg3d.inference.predictor import Predictor

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for w in preflight(in_dir, out_dir):  # before any model is loaded
        if log:
            log(f"warning: {w}")
    if predictor is None:
        from seg3d.inference.sliding_window import precision_warning

        predictor = Predictor(model_dir, folds=folds, config=config, device=device, tta=tta, step=step,
                              checkpoint=checkpoint, postprocess=postprocess, precision=precision)
        warning = precision_warning(predictor.precision, predictor.device)
        if warning and log:
            log(f"warning: {warning}")
    listing = list_case_folder(in_dir, predictor.plan.num_channels, exclude=(out_dir,))
    if listing.num_files == 0:
        raise Seg3dError("the input folder is empty", in_dir)
    cases = listing.cases
    ids = split_parts(list(cases), num_parts, part_id)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(out_dir, e, "cannot create the output folder") from None
    records: dict[str, dict[str, Any]] = {}
    issues = list(listing.issues) if part_id == 0 else []  # each part would list them again
    failures = [issue_failure(i) for i in issues if i.status == "failed"]

    todo: list[tuple[str, list[Path], Path]] = []
    for cid in ids:
        paths = cases[cid]
        out = out_dir / f"{cid}{_ending(paths[0].name)}"
        if out.resolve() in {p.resolve() for p in paths}:
            raise Seg3dError("the output would overwrite its input: choose another output folder", out)
        if continue_:
            why = _existing_output_problem(out, paths[0], _probabilities_path(out) if save_probabilities else None)
            if why is None:
                records[cid] = {"case": cid, "status": "skipped", "output": str(out)}
                continue
            if why != "missing" and log:
                log(f"redoing {out}: the existing output is incomplete ({why})")
        todo.append((cid, paths, out))

    total = len(todo)
    done = 0

    def load(item):
        cid, paths, _ = item
        t0 = time.perf_counter()
        data, geo = read_case_images(Case(cid, tuple(paths)), predictor.plan.num_channels)
        t1 = time.perf_counter()
        pdata, props = predictor.preprocess(data, geo, where=paths[0])
        warnings = [f"{p}: {w}" for p in paths for w in file_orientation_warnings(p, geo)]
        return pdata, props, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}, warnings

    def write(item, probs, props, timings):
        cid, _, out = item
        t0 = time.perf_counter()
        labels, p = predictor.export(probs, props, probabilities=save_probabilities)
        t1 = time.perf_counter()
        notes = write_like(labels, props.geometry, out, reference=item[1][0])
        if p is not None:
            write_probabilities(_probabilities_path(out), p, predictor.label_values)
        timings.update(export=t1 - t0, write=time.perf_counter() - t1)
        return timings, notes

    def fail(item, err: BaseException):
        cid, paths, out = item
        if isinstance(err, Seg3dError):
            msg = str(err)
        elif isinstance(err, OSError):  # storage trouble the writer did not name (it names the output file)
            msg = f"{out}: {describe_os_error(err)}"
        else:
            msg = f"internal error ({type(err).__name__}: {err})"
        path = str(err.path) if isinstance(err, Seg3dError) and err.path else str(paths[0])
        kind = "output" if path == str(out) or isinstance(err, OSError) else "input"
        failures.append({"case": cid, "path": path, "error": msg, "kind": kind})
        records[cid] = {"case": cid, "status": "failed", "error": msg, "kind": kind}
        if log:
            log(f"failed: {msg}")

    def finished(item, fut: Future):
        nonlocal done
        cid, _, out = item
        try:
            timings, notes = fut.result()
            records[cid] = {"case": cid, "status": "ok", "output": str(out),
                            "seconds": {k: round(v, 4) for k, v in timings.items()}}
            if notes:
                records[cid]["header_notes"] = notes
                for n in notes if log else ():
                    log(f"note: {out}: {n}")
        except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
            fail(item, e)
        done += 1
        elapsed = time.perf_counter() - t_loop
        report(progress, done, total, f"{done / max(elapsed, 1e-9):.2f} cases/s")

    report(progress, 0, total, "")
    t_loop = time.perf_counter()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="seg3d-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="seg3d-write") as writer:
            pending_write: tuple | None = None
            nxt = reader.submit(load, todo[0]) if todo else None
            for i, item in enumerate(todo):
                fut, nxt = nxt, (reader.submit(load, todo[i + 1]) if i + 1 < len(todo) else None)
                try:
                    pdata, props, timings, warnings = fut.result()
                    for w in warnings:
                        if log:
                            log(f"warning: {w}")
                    t0 = time.perf_counter()
                    probs = predictor.predict_preprocessed(pdata)
                    timings["network"] = time.perf_counter() - t0
                    del pdata
                except Exception as e:  # noqa: BLE001
                    fail(item, e)
                    done += 1
                    report(progress, done, total, "")
                    continue
                if pending_write is not None:  # at most one case waiting to be written: bounded memory
                    finished(*pending_write)
                pending_write = (item, writer.submit(write, item, probs, props, timings))
                del probs
            if pending_write is not None:
                finished(*pending_write)
    finally:
        seconds = time.perf_counter() - t_start
        manifest = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(seconds, 3), "versions": _versions(), "input_dir": str(in_dir.resolve()),
                    "output_dir": str(out_dir.resolve()), "num_parts": num_parts, "part_id": part_id,
                    "continue": continue_, "save_probabilities": save_probabilities,
                    **predictor.settings(), "cases": [records[c] for c in ids if c in records],
                    "failures": failures}
        inputs, counts = account_inputs(issues, {c: cases[c] for c in ids}, records)
        manifest.update(input_counts=counts, inputs=inputs)
        name = "predict_manifest.json" if num_parts == 1 else f"predict_manifest_part{part_id}of{num_parts}.json"
        manifest_path = out_dir / name
        manifest_note = write_manifest_or_note(manifest_path, manifest)
        if manifest_note and log:
            log(manifest_note)
    ok = sum(1 for r in records.values() if r["status"] == "ok")
    net = [r["seconds"]["network"] for r in records.values() if r["status"] == "ok"]
    return {"total": len(ids) + sum(1 for i in issues if i.status == "failed"), "predicted": ok,
            "skipped": sum(1 for r in records.values() if r["status"] == "skipped"), "failed": failures,
            "seconds": seconds, "seconds_per_case": (time.perf_counter() - t_loop) / ok if ok else None,
            "network_seconds_per_case": float(np.mean(net)) if net else None,
            "manifest": None if manifest_note else str(manifest_path), "manifest_note": manifest_note,
            "input_dir": str(in_dir), "input_counts": counts, "inputs": inputs}


def _probabilities_path(out: Path) -> Path:
    e = _ending(out.name) or ""
    return out.with_name(out.name[: len(out.name) - len(e)] + ".npz")


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


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "predict_manifest.json").read_text())
