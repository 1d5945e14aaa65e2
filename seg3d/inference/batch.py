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

from seg3d.atomic import write_json_atomic, write_with_atomic
from seg3d.errors import Seg3dError
from seg3d.inference.export import write_like
from seg3d.io.image import SUPPORTED_ENDINGS, read_header
from seg3d.io.layout import Case, group_channel_files, read_case_images
from seg3d.progress import ProgressFn, report


def _ending(name: str) -> str | None:
    low = name.lower()
    return next((e for e in SUPPORTED_ENDINGS if low.endswith(e)), None)


def list_input_cases(in_dir: Path, num_channels: int) -> tuple[dict[str, list[Path]], list[tuple[str | None, Path, str]]]:
    """Cases ``{case_id: channel files in order}`` and problems ``[(case_id, path, message)]`` found while listing."""
    if not in_dir.is_dir():
        raise Seg3dError("input folder not found", in_dir)
    groups = group_channel_files(in_dir, num_channels)
    used = {p for paths in groups.values() for p in paths}
    problems: list[tuple[str | None, Path, str]] = []
    for p in sorted(in_dir.iterdir()):
        if p.is_file() and not p.name.startswith(".") and _ending(p.name) and p not in used:
            problems.append((None, p, f"file name does not follow <case>_XXXX{_ending(p.name)} (the model has "
                                f"{num_channels} channels)"))
    cases: dict[str, list[Path]] = {}
    for cid, paths in sorted(groups.items()):
        by_channel = {}
        for p in paths:
            stem = p.name[: -len(_ending(p.name) or "")]
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


def output_complete(out_path: Path, expected_size: tuple[int, ...]) -> bool:
    """An existing output that opens and has the input's size (partial files never carry the final name)."""
    if not out_path.is_file():
        return False
    try:
        return read_header(out_path).geometry.size == tuple(expected_size)
    except Seg3dError:
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
    if predictor is None:
        from seg3d.core.device import precision_warning

        predictor = Predictor(model_dir, folds=folds, config=config, device=device, tta=tta, step=step,
                              checkpoint=checkpoint, postprocess=postprocess, precision=precision)
        warning = precision_warning(predictor.precision, predictor.device)
        if warning and log:
            log(f"warning: {warning}")
    cases, problems = list_input_cases(in_dir, predictor.plan.num_channels)
    ids = split_parts(list(cases), num_parts, part_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    failures = [{"case": c, "path": str(p), "error": f"{p}: {m}"} for c, p, m in problems] if part_id == 0 else []

    todo: list[tuple[str, list[Path], Path]] = []
    for cid in ids:
        paths = cases[cid]
        out = out_dir / f"{cid}{_ending(paths[0].name)}"
        if out.resolve() in {p.resolve() for p in paths}:
            raise Seg3dError("the output would overwrite its input: choose another output folder", out)
        if continue_:
            try:
                size = read_header(paths[0]).geometry.size
            except Seg3dError:
                size = None
            prob_ok = not save_probabilities or _probabilities_path(out).is_file()
            if size is not None and prob_ok and output_complete(out, size):
                records[cid] = {"case": cid, "status": "skipped", "output": str(out)}
                continue
        todo.append((cid, paths, out))

    total = len(todo)
    done = 0

    def load(item):
        cid, paths, _ = item
        t0 = time.perf_counter()
        data, geo = read_case_images(Case(cid, tuple(paths)), predictor.plan.num_channels)
        t1 = time.perf_counter()
        pdata, props = predictor.preprocess(data, geo, where=paths[0])
        return pdata, props, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}

    def write(item, probs, props, timings):
        cid, _, out = item
        t0 = time.perf_counter()
        labels, p = predictor.export(probs, props, probabilities=save_probabilities)
        t1 = time.perf_counter()
        write_like(labels, props.geometry, out, reference=item[1][0])
        if p is not None:
            write_probabilities(_probabilities_path(out), p, predictor.label_values)
        timings.update(export=t1 - t0, write=time.perf_counter() - t1)
        return timings

    def fail(item, err: BaseException):
        cid, paths, _ = item
        msg = str(err) if isinstance(err, Seg3dError) else f"internal error ({type(err).__name__}: {err})"
        path = str(err.path) if isinstance(err, Seg3dError) and err.path else str(paths[0])
        failures.append({"case": cid, "path": path, "error": msg})
        records[cid] = {"case": cid, "status": "failed", "error": msg}
        if log:
            log(f"failed: {msg}")

    def finished(item, fut: Future):
        nonlocal done
        cid, _, out = item
        try:
            timings = fut.result()
            records[cid] = {"case": cid, "status": "ok", "output": str(out),
                            "seconds": {k: round(v, 4) for k, v in timings.items()}}
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
                    pdata, props, timings = fut.result()
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
        name = "predict_manifest.json" if num_parts == 1 else f"predict_manifest_part{part_id}of{num_parts}.json"
        manifest_path = out_dir / name
        write_json_atomic(manifest_path, manifest)
    ok = sum(1 for r in records.values() if r["status"] == "ok")
    net = [r["seconds"]["network"] for r in records.values() if r["status"] == "ok"]
    return {"total": len(ids), "predicted": ok,
            "skipped": sum(1 for r in records.values() if r["status"] == "skipped"), "failed": failures,
            "seconds": seconds, "seconds_per_case": (time.perf_counter() - t_loop) / ok if ok else None,
            "network_seconds_per_case": float(np.mean(net)) if net else None, "manifest": str(manifest_path)}


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

    write_with_atomic(path, writer)


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "predict_manifest.json").read_text())
