"""Every input of a batch accounted for, and the output location checked before any work.

Helpers of the batch stages (:mod:`seg3d.inference.stages`) and runners: the cheap checks before any model is
loaded (:func:`preflight`) and the per-file record that makes a summary add up to the files of the input folder
(:func:`account_inputs`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from seg3d.atomic import check_output_folder
from seg3d.errors import Seg3dError
from seg3d.io.input_folder import InputIssue


def preflight(in_dir: Path, out_dir: Path) -> list[str]:
    """Input folder present, output folder creatable and writable, not the input folder itself; warnings
    (e.g. little free space) are returned. Raises :class:`Seg3dError` naming the folder and the cause."""
    if not in_dir.is_dir():
        raise Seg3dError("input folder not found" if not in_dir.exists() else "the input is not a folder", in_dir)
    if out_dir.exists() and out_dir.resolve() == in_dir.resolve():
        raise Seg3dError("the output folder is the input folder: masks would mix with (and could overwrite) the "
                         "images; choose another output folder", out_dir)
    try:
        need = sum(p.stat().st_size for p in in_dir.iterdir() if p.is_file()) // 10
    except OSError:
        need = 0
    warning = check_output_folder(out_dir, need)
    return [warning] if warning else []


def account_inputs(issues: list[InputIssue], cases: dict[str, tuple[Path, ...]],
                   records: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One entry per input file ``{file, status, case, kind, reason}`` and the counts, which add up to the files.

    ``issues``: what the listing did not predict; ``cases``: id -> files of the cases this run handled;
    ``records``: their outcome (:class:`~seg3d.inference.stages.CaseRecord`: ``status`` ok | skipped | failed).
    """
    inputs: list[dict[str, Any]] = []
    for issue in issues:
        for p in issue.paths:
            inputs.append({"file": str(p), "status": issue.status, "case": issue.case_id, "kind": issue.kind,
                           "reason": issue.reason})
    for cid, paths in cases.items():
        rec = records.get(cid)
        st = rec.status if rec is not None else "failed"
        status = {"ok": "predicted"}.get(st, st)
        reason = {"skipped": "already complete",
                  "failed": rec.error if rec is not None else "not attempted (the run was interrupted)"}.get(st)
        kind = {"skipped": "already complete", "failed": (rec.kind if rec is not None else None) or "case"}.get(st)
        for p in paths:
            inputs.append({"file": str(p), "status": status, "case": cid, "kind": kind, "reason": reason})
    by_status = Counter(i["status"] for i in inputs)
    counts = {"files": len(inputs), **{s: by_status.get(s, 0) for s in ("predicted", "skipped", "failed")},
              "skipped_by_reason": dict(Counter(i["kind"] for i in inputs if i["status"] == "skipped")),
              "failed_by_reason": dict(Counter(i["kind"] for i in inputs if i["status"] == "failed"))}
    return sorted(inputs, key=lambda i: i["file"]), counts
