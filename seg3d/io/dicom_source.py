"""The DICOM series case source: a series found under ``seg3d predict -i DIR``, read like an image file.

:class:`DicomSource` has the interface of :class:`seg3d.io.sources.CaseSource` (``case_id``, ``channels``,
``format``, ``reference``, ``ending``, ``read``, ``size``) and is plain picklable data, so every runner and
writer treats it like a file source. :func:`list_dicom_sources` turns a folder tree into sources, skipped
files (with reasons) and problems (unreadable files, series the model cannot take).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.dicom import (
    DicomSeries,
    SeriesFilter,
    discover_series,
    modality_mismatch,
    read_series,
    series_geometry,
    series_layout,
)
from seg3d.io.image import Geometry

DICOM_FORMAT = "dicom"


@dataclass(frozen=True)
class DicomSource:
    """One DICOM series as a one-channel case (outputs default to NIfTI + DICOM-SEG)."""

    case_id: str
    series: DicomSeries
    format: str = DICOM_FORMAT
    four_d: bool = False

    @property
    def channels(self) -> tuple[Path, ...]:
        """The series' files (what the source is made of)."""
        return self.series.files

    @property
    def reference(self) -> Path:
        """The series' folder (messages name it; writers get the series itself from ``series``)."""
        return self.series.folder

    @property
    def ending(self) -> str:
        return ".nii.gz"

    def read(self, num_channels: int | None = None) -> tuple[np.ndarray, Geometry]:
        """float32 ``(1, z, y, x)`` with rescale applied, and the series' Geometry.

        Raises:
            Seg3dError: the model wants several channels, or the series is refused by the reader.
        """
        if num_channels not in (None, 1):
            raise self.series.error(f"a DICOM series is one channel; this model expects {num_channels}")
        array, geometry, _ = read_series(self.series)
        return array[None], geometry

    def size(self) -> tuple[int, ...]:
        """The series' grid size (x, y, z) from its headers. Raises Seg3dError if the series is refused."""
        return series_geometry(self.series).size

    def provenance(self) -> dict:
        """What identifies the input: UIDs, instance count, a digest of the files' bytes, reader notes."""
        s = self.series
        try:
            notes = list(series_layout(s).notes)
        except Seg3dError as e:
            notes = [str(e)]
        return {"format": DICOM_FORMAT, "folder": str(s.folder), "study_instance_uid": s.study_uid,
                "series_instance_uid": s.series_uid, "frame_of_reference_uid": s.frame_of_reference_uid,
                "modality": s.modality, "series_description": s.description, "series_number": s.series_number,
                "instances": s.instance_count, "files_sha256": files_digest(s.files), "notes": notes}


def files_digest(paths) -> str:
    """sha256 over the sorted files' own sha256 digests (identifies a series even with empty UIDs)."""
    outer = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        outer.update(file_sha256(p).encode())
    return outer.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DicomListing:
    sources: list[DicomSource] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files deliberately not used, why
    problems: list[tuple[str | None, Path, str]] = field(default_factory=list)  # (case id, path, message)
    refused_files: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # case id -> files of a refused series


def list_dicom_sources(in_dir: str | Path, channel_names: tuple[str, ...], series_filter: SeriesFilter | None = None,
                       taken_ids=(), exclude: str | Path | None = None) -> DicomListing:
    """DICOM series under ``in_dir`` as sources for a model with ``channel_names``.

    Series the model cannot take (several channels, another modality) and unreadable files are problems,
    named with their case id; ids in ``taken_ids`` (image-file cases of the same folder) are avoided.
    """
    inv = discover_series(in_dir, series_filter, exclude=exclude)
    taken = set(taken_ids)
    series = []
    for s in inv.series:  # an image file case of the same name keeps its id; the series gets a suffix
        cid = s.case_id
        if cid in taken:
            cid = f"{cid}_dicom"
            if cid in taken:
                cid = f"{cid}_{hashlib.sha1(s.key.encode()).hexdigest()[:8]}"
            s = replace(s, case_id=cid)
        taken.add(cid)
        series.append(s)
    out = DicomListing(skipped=list(inv.skipped))
    out.problems.extend((None, p, f"unreadable DICOM file: {m}") for p, m in inv.problems)
    out.skipped.extend((p, "a DICOM-SEG (input segmentations are not predicted)") for p in inv.segmentations)
    for s in series:
        if len(channel_names) != 1:
            why = (f"{s.label}: a DICOM series is one channel; this model expects {len(channel_names)} "
                   f"({', '.join(channel_names)})")
            out.problems.append((s.case_id, s.folder, why))
            out.refused_files[s.case_id] = tuple(s.files)
            continue
        why = modality_mismatch(s, channel_names[0])
        if why:
            out.problems.append((s.case_id, s.folder, f"{s.label}: {why}"))
            out.refused_files[s.case_id] = tuple(s.files)
            continue
        out.sources.append(DicomSource(s.case_id, s))
    return out
