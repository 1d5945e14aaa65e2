"""What ``seg3d predict`` writes about each case besides its masks: statistics, a preview, provenance.

Files (in the output folder):

* ``statistics/<case>.json`` (``--statistics``): :func:`seg3d.evaluation.statistics.structure_statistics`
  of the mask on the input image, LPS coordinates stated; at the end of the run ``statistics.csv`` gathers
  every case's file (also those of earlier ``--continue`` runs) into one row per case and structure.
* ``previews/<case>.png`` (``--preview``): three orthogonal slices, mask over image, a legend.
* provenance in the manifest: the input (file checksums, or a DICOM series' UIDs, instance count and a digest
  of its files), the model's checksum, and every output with its format.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.evaluation.statistics import (
    case_statistics_document,
    csv_rows,
    structure_statistics,
    write_cohort_csv,
)
from seg3d.io.image import Geometry

STATISTICS_DIR, PREVIEW_DIR, COHORT_CSV = "statistics", "previews", "statistics.csv"


def statistics_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / STATISTICS_DIR / f"{case_id}.json"


def preview_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / PREVIEW_DIR / f"{case_id}.png"


def input_provenance(source) -> dict:
    """The input's identity: ``source.provenance()`` where the source has one (DICOM), else each file's sha256."""
    if hasattr(source, "provenance"):
        return source.provenance()
    from seg3d.io.dicom_source import file_sha256

    return {"format": getattr(source, "format", ""),
            "files": [{"path": str(p), "sha256": file_sha256(p)} for p in source.channels]}


def write_case_report(out_dir: Path, case_id: str, image: np.ndarray, mask: np.ndarray, geometry: Geometry,
                      labels: dict[str, int], statistics: bool, preview: bool, source_name: str = "") -> dict:
    """Write the case's statistics and/or preview; returns ``{"statistics": path, "preview": path}`` written.

    ``image`` is the input ``(C, z, y, x)`` or ``(z, y, x)`` on the mask's grid (``mask``: label values).
    """
    written = {}
    if statistics:
        recs = structure_statistics(image, mask, geometry, labels)
        path = statistics_path(out_dir, case_id)
        write_json_atomic(path, case_statistics_document(case_id, recs, geometry, source_name))
        written["statistics"] = str(path)
    if preview:
        from seg3d.evaluation.figures import preview as draw

        path = preview_path(out_dir, case_id)
        draw(image, mask, geometry, labels, path, title=case_id)
        written["preview"] = str(path)
    return written


def write_cohort_statistics(out_dir: Path) -> Path | None:
    """``statistics.csv`` from every ``statistics/<case>.json`` in ``out_dir`` (None when there is none)."""
    folder = Path(out_dir) / STATISTICS_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    rows = []
    for f in files:
        doc = json.loads(f.read_text())
        rows.extend(csv_rows(doc["case"], doc["structures"]))
    path = Path(out_dir) / COHORT_CSV
    write_cohort_csv(path, rows)
    return path
