"""DICOM series in: discovery, grouping, geometry from the slices themselves, voxels with their rescale.

The one module that reads DICOM images. It returns what the NIfTI reader returns: a float32 ``(z, y, x)``
array and a :class:`~seg3d.io.image.Geometry` in SimpleITK order, so everything downstream is unchanged.

Rules (each one documented here and in ``data/README.md``, each one tested):

* **Discovery** is recursive; file names do not matter and a DICOMDIR is not needed (it is skipped, like
  any non-image object). Files with an image ending that seg3d reads otherwise (``.nii.gz`` ...) are left to
  the image reader; any other file that is not DICOM (no ``DICM`` preamble) is *ignored* and listed with the
  reason; a file that claims to be DICOM and cannot be parsed is *unreadable*: the series in its folder are
  refused (it may be one of their slices), everything else goes on.
* **Grouping** is by SeriesInstanceUID. Where it is empty or missing (anonymisers do this), files are grouped
  by the *fallback key* (folder, StudyInstanceUID, FrameOfReferenceUID, Modality, SeriesNumber,
  SeriesDescription) and the series carries a note saying so.
* **Geometry** comes from ImagePositionPatient, ImageOrientationPatient and PixelSpacing of every slice (or
  every frame's functional groups in an enhanced multi-frame file). Slices are sorted by their position
  along the normal (row cosine x column cosine), never by file name or InstanceNumber; the slice axis of the
  Geometry is that normal, so the direction matrix is right-handed, as SimpleITK's.
* **Refused** with a :class:`~seg3d.errors.Seg3dError` naming the series and the values: fewer than
  :data:`MIN_SLICES` distinct positions; non-uniform spacing (a gap: a slice more than :data:`SPACING_TOL` of
  the spacing off a uniform grid); two different images at one position
  (two reconstructions or time points in one series); mixed orientations, pixel spacings or matrix sizes;
  mixed ConvolutionKernel/SliceThickness (two reconstructions sharing one SeriesInstanceUID); a sheared grid
  (gantry tilt: positions drift in-plane); colour images; frames without a position; undecodable pixel data
  (truncated files, a transfer syntax no installed decoder handles).
* **Accepted with a note**: localizer/scout images (ImageType LOCALIZER/SCOUT/TOPOGRAM) inside a series are
  left out; a series made only of them is skipped. A slice sent twice (same position, identical voxels) is
  read once. Enhanced multi-frame files whose frames are stored out of order are sorted like slices.
* **Rescale**: RescaleSlope/RescaleIntercept of every slice (or frame) are applied in float64 and the volume
  is float32, so per-slice slopes (PET) keep their fractions.
* **Case id** (:func:`assign_case_ids`): the series' folder relative to the input folder, ``/`` replaced by
  ``_`` (the input folder's own name when the files lie at its top); when one folder holds several series,
  ``_S<SeriesNumber>`` is appended (``_<PatientID>_<StudyDate>_S<SeriesNumber>`` when series numbers repeat);
  any clash left gets ``_<8 hex digits of the grouping key>``. Then :func:`sanitise_case_id`.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.image import SUPPORTED_ENDINGS, Geometry

MIN_SLICES = 3  # fewer distinct positions: the spacing cannot be checked for uniformity
SPACING_TOL = 0.05  # slices may sit off the uniform grid by 5 % of the slice spacing (or SPACING_ATOL_MM)
SPACING_ATOL_MM = 0.01
SAME_POSITION_MM = 0.01  # closer than this along the normal: the same position
ORIENTATION_ATOL = 1e-4  # direction cosines of all slices agree to this
PIXEL_SPACING_RTOL = 1e-4
SHEAR_TOL_VOXELS = 0.1  # in-plane drift of slice positions allowed, in pixels (more: a sheared grid)
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # DICOMDIR
# image storage classes whose files must carry a position (CT, MR, PET, NM; classic, enhanced, legacy converted)
VOLUME_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1." + s for s in ("2", "2.1", "2.2", "4", "4.1", "4.4", "128", "128.1",
                                                                "130", "20")}
# channel names a model may carry -> the DICOM Modality its series must have
MODALITY_ALIASES = {"CT": "CT", "CTA": "CT", "MR": "MR", "MRI": "MR", "T1": "MR", "T1W": "MR", "T1C": "MR",
                    "T1CE": "MR", "T1GD": "MR", "T2": "MR", "T2W": "MR", "FLAIR": "MR", "ADC": "MR", "DWI": "MR",
                    "PD": "MR", "PET": "PT", "PT": "PT", "SPECT": "NM", "NM": "NM", "US": "US"}


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series: a single-frame file, or frame ``frame`` (0-based) of a multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, float, float]  # ImagePositionPatient (mm, LPS)
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines, then column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm, as DICOM stores it
    rows: int
    columns: int
    slope: float
    intercept: float
    sop_instance_uid: str
    localizer: bool = False
    reconstruction: tuple[str, str] = ("", "")  # ConvolutionKernel, SliceThickness

    @property
    def where(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} frame {self.frame + 1}"


@dataclass(frozen=True)
class DicomSeries:
    """The files of one series and their headers; nothing decoded. ``case_id`` is set by discovery."""

    key: str  # grouping key: the SeriesInstanceUID, or "nouid:..." (module docstring)
    folder: Path  # deepest folder holding all its files
    files: tuple[Path, ...]
    frames: tuple[Frame, ...]
    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""
    description: str = ""
    series_number: str = ""
    patient_id: str = ""
    study_date: str = ""
    case_id: str = ""
    notes: tuple[str, ...] = ()
    broken_neighbours: tuple[str, ...] = ()  # unreadable files in its folder (path: reason)

    @property
    def label(self) -> str:
        """How messages name the series."""
        uid = self.series_uid or "empty"
        return (f"DICOM series '{self.case_id or self.folder.name}' ({self.modality or '?'}, SeriesInstanceUID "
                f"{uid}, {len(self.files)} file(s))")

    @property
    def instance_count(self) -> int:
        return len(self.files)

    def error(self, message: str) -> Seg3dError:
        return Seg3dError(f"{self.label}: {message}", self.folder)


@dataclass(frozen=True)
class SeriesFilter:
    """Which series to use when a study holds several (``--series-filter``); all fields must match.

    ``modalities``: DICOM Modality values (``CT``, ``MR`` ...); ``description``: a shell pattern matched
    case-insensitively against SeriesDescription (``*abdomen*``); ``min_slices``: at least this many images.
    """

    modalities: tuple[str, ...] = ()
    description: str | None = None
    min_slices: int = 0

    def __post_init__(self):
        if self.min_slices < 0:
            raise Seg3dError(f"--series-filter min-slices must be >= 0, got {self.min_slices}")

    @classmethod
    def parse(cls, specs: Iterable[str]) -> SeriesFilter:
        """From ``["modality=CT", "description=*body*", "min-slices=20"]`` (modality may list ``CT,PT``)."""
        kw: dict = {}
        for spec in specs:
            key, sep, value = spec.partition("=")
            key = key.strip().lower().replace("_", "-")
            if not sep or not value.strip():
                raise Seg3dError(f"--series-filter takes key=value (modality=CT, description='*abdomen*', "
                                 f"min-slices=20), got '{spec}'")
            value = value.strip()
            if key == "modality":
                kw["modalities"] = tuple(kw.get("modalities", ())) + tuple(
                    v.strip().upper() for v in value.split(",") if v.strip())
            elif key == "description":
                kw["description"] = value
            elif key == "min-slices":
                if not value.isdigit():
                    raise Seg3dError(f"--series-filter min-slices takes a whole number, got '{value}'")
                kw["min_slices"] = int(value)
            else:
                raise Seg3dError(f"--series-filter: unknown key '{key}' (modality, description, min-slices)")
        return cls(**kw)

    @property
    def active(self) -> bool:
        return bool(self.modalities or self.description or self.min_slices)

    def rejects(self, series: DicomSeries) -> str | None:
        """Why ``series`` is filtered out, or None when it is kept."""
        if self.modalities and series.modality.upper() not in self.modalities:
            return f"modality {series.modality or '(none)'} not in {', '.join(self.modalities)}"
        if self.description and not fnmatch.fnmatch(series.description.lower(), self.description.lower()):
            return f"description '{series.description}' does not match '{self.description}'"
        n = len({f.position for f in series.frames if not f.localizer})
        if n < self.min_slices:
            return f"{n} slice(s) < min-slices {self.min_slices}"
        return None


@dataclass
class DicomInventory:
    """What discovery found under a folder: every file is in exactly one of these lists."""

    series: list[DicomSeries] = field(default_factory=list)  # image series to read
    segmentations: list[Path] = field(default_factory=list)  # DICOM-SEG objects (for `seg3d convert`)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # deliberately not used, with the reason
    problems: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files


# ----------------------------------------------------------------------------------------------- headers

def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path):
    """The whole file, pixel bytes undecoded: truncation shows as pixel data shorter than its stated length
    (pydicom reads a truncated file without an error)."""
    import pydicom

    return pydicom.dcmread(path)


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, None)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number_text(text: str) -> str:
    """``"3"``, ``"3.0"`` and ``"3.000000"`` compare equal (reconstruction attributes are compared as text)."""
    try:
        return f"{float(text):.6g}"
    except ValueError:
        return text


def _floats(value, n: int, what: str, where: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise Seg3dError(f"{what} is not numeric ({value!r})", where) from None
    if len(out) != n:
        raise Seg3dError(f"{what} has {len(out)} values, expected {n} ({value!r})", where)
    return out


def _localizer(ds) -> bool:
    image_type = ds.get("ImageType", None) or []
    return any(str(v).upper() in LOCALIZER_TYPES for v in image_type)


def _frames_of(ds, path: Path) -> list[Frame]:
    """The 2D images of one file with their geometry; [] for objects without image geometry."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        # stop_before_pixels: PixelData is absent from the header read; the caller checks the SOP class
        pass
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    recon = (_text(ds, "ConvolutionKernel"), _number_text(_text(ds, "SliceThickness")))
    where = str(path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
        per = ds.PerFrameFunctionalGroupsSequence
        if len(per) != n_frames:
            raise Seg3dError(f"NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has {len(per)} "
                             "items", path)
        out = []
        for i, item in enumerate(per):
            def group(name, attr, default=None, _item=item):
                for src in (_item, shared):
                    if src is not None and name in src and len(src[name].value) and attr in src[name][0]:
                        return src[name][0][attr].value
                return default
            pos = group("PlanePositionSequence", "ImagePositionPatient")
            ori = group("PlaneOrientationSequence", "ImageOrientationPatient")
            ps = group("PixelMeasuresSequence", "PixelSpacing")
            if pos is None or ori is None or ps is None:
                raise Seg3dError(f"frame {i + 1} has no ImagePositionPatient/ImageOrientationPatient/PixelSpacing "
                                 "in its functional groups: the frames cannot be placed", path)
            slope = group("PixelValueTransformationSequence", "RescaleSlope", ds.get("RescaleSlope", 1))
            icpt = group("PixelValueTransformationSequence", "RescaleIntercept", ds.get("RescaleIntercept", 0))
            thick = group("PixelMeasuresSequence", "SliceThickness", "")
            frame_type = group("MRImageFrameTypeSequence", "FrameType") or group("CTImageFrameTypeSequence",
                                                                               "FrameType") or []
            out.append(Frame(path, i, _floats(pos, 3, "ImagePositionPatient", f"{where} frame {i + 1}"),
                             _floats(ori, 6, "ImageOrientationPatient", f"{where} frame {i + 1}"),
                             _floats(ps, 2, "PixelSpacing", f"{where} frame {i + 1}"), rows, cols,
                             float(slope if slope not in (None, "") else 1),
                             float(icpt if icpt not in (None, "") else 0), _text(ds, "SOPInstanceUID"),
                             _localizer(ds) or any(str(v).upper() in LOCALIZER_TYPES for v in frame_type),
                             (recon[0], _number_text(str(thick)) if thick != "" else recon[1])))
        return out
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return []
    if n_frames > 1:
        raise Seg3dError(f"multi-frame file ({n_frames} frames) without per-frame functional groups: the "
                         "position of each frame is unknown, so it cannot be placed", path)
    if "PixelSpacing" not in ds:
        raise Seg3dError("PixelSpacing is missing: the in-plane voxel size is unknown", path)
    slope, icpt = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
    return [Frame(path, None, _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", where),
                  _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
                  _floats(ds.PixelSpacing, 2, "PixelSpacing", where), rows, cols,
                  float(slope if slope not in (None, "") else 1), float(icpt if icpt not in (None, "") else 0),
                  _text(ds, "SOPInstanceUID"), _localizer(ds), recon)]


# --------------------------------------------------------------------------------------------- discovery

def _walk(root: Path, exclude: Path | None = None) -> list[Path]:
    out = []
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or (Path(dirpath) / d).resolve() != skip))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _has_image_ending(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(e) for e in SUPPORTED_ENDINGS)


def discover_series(root: str | Path, series_filter: SeriesFilter | None = None,
                    include_image_files: bool = False, exclude: str | Path | None = None) -> DicomInventory:
    """Find every DICOM series under ``root`` (recursively) and account for every other file.

    Args:
        root: a folder.
        series_filter: series it rejects go to ``skipped`` with the reason.
        include_image_files: also list files with a NIfTI/NRRD/MHA ending in ``skipped`` (by default they are
            left out silently: ``seg3d predict`` reads them as images).
        exclude: a folder below ``root`` not to search (``seg3d predict``'s output folder inside its input).

    Returns:
        A :class:`DicomInventory`; series carry their case id (:func:`assign_case_ids`).

    Raises:
        Seg3dError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise Seg3dError("input folder not found", root)
    series_filter = series_filter or SeriesFilter()
    inv = DicomInventory()
    groups: dict[str, list[tuple[Path, object, list[Frame]]]] = defaultdict(list)
    broken_by_folder: dict[Path, list[str]] = defaultdict(list)
    for path in _walk(root, Path(exclude) if exclude is not None else None):
        if _has_image_ending(path):
            if include_image_files:
                inv.skipped.append((path, "an image file, not DICOM"))
            continue
        if not is_dicom_file(path):
            inv.skipped.append((path, "not a DICOM file (no DICM preamble)"))
            continue
        try:
            ds = _read_header(path)
            sop_class = _sop_class(ds)
            if sop_class == DIRECTORY_SOP_CLASS or path.name.upper() == "DICOMDIR":
                inv.skipped.append((path, "DICOMDIR (an index; series are found by reading the files themselves)"))
                continue
            damage = _damage(ds, path, sop_class)
            if damage:
                raise Seg3dError(damage, path)
            if sop_class == SEG_SOP_CLASS or _text(ds, "Modality") == "SEG":
                inv.segmentations.append(path)
                continue
            try:
                frames = _frames_of(ds, path)
            except Seg3dError as e:
                if sop_class in VOLUME_SOP_CLASSES:
                    raise
                # RT dose grids, ultrasound cines, ...: objects this reader does not place are skipped, not errors
                why = str(e).removeprefix(f"{path}: ")
                inv.skipped.append((path, f"not a volume this reader places ({_text(ds, 'Modality') or '?'}): {why}"))
                continue
        except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
            reason = (str(e).removeprefix(f"{path}: ") if isinstance(e, Seg3dError)
                      else f"unreadable DICOM file ({type(e).__name__}: {e})")
            inv.problems.append((path, reason))
            broken_by_folder[path.parent].append(f"{path.name}: {reason}")
            continue
        if not frames:
            what = _text(ds, "Modality") or "no modality"
            reason = f"no image geometry ({what}, SOP class {sop_class or 'empty'}): not part of a 3D volume"
            inv.skipped.append((path, reason))
            continue
        groups[_group_key(ds, path)].append((path, _series_tags(ds), frames))  # not the pixels: bounded memory

    for key, members in groups.items():
        series = _make_series(key, members)
        if all(f.localizer for f in series.frames):
            inv.skipped.extend((p, f"localizer/scout image (ImageType LOCALIZER) of {series.label}: not a volume")
                               for p in series.files)
            continue
        broken = [b for folder, msgs in broken_by_folder.items() if _inside(folder, series) for b in msgs]
        inv.series.append(replace(series, broken_neighbours=tuple(broken)))
    inv.series = assign_case_ids(inv.series, root)
    kept = []
    for s in inv.series:
        reason = series_filter.rejects(s)
        if reason:
            inv.skipped.extend((p, f"{s.label} filtered out by --series-filter: {reason}") for p in s.files)
        else:
            kept.append(s)
    inv.series = kept
    return inv


def _sop_class(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")


def _damage(ds, path: Path, sop_class: str) -> str | None:
    """Why a header read without error is still a damaged file (pydicom reads truncated headers silently)."""
    if not sop_class:
        return "no SOP Class UID in its header: a damaged or truncated DICOM file"
    if sop_class not in VOLUME_SOP_CLASSES:
        return None
    if not ds.get("Rows") or not ds.get("Columns") or ("ImagePositionPatient" not in ds
                                                       and "PerFrameFunctionalGroupsSequence" not in ds):
        return ("header incomplete for an image (Rows, Columns or ImagePositionPatient missing): a truncated or "
                "damaged file")
    raw = ds.get_item("PixelData") if "PixelData" in ds else None
    if raw is None:
        return "no PixelData: a truncated or damaged image file"
    stated = getattr(raw, "length", None)
    value = raw.value if raw.value is not None else b""
    if stated is not None and stated != 0xFFFFFFFF and len(value) < stated:
        return (f"pixel data has {len(value)} of its {stated} bytes: a truncated file")
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed and not syntax.is_deflated:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
                    * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("BitsAllocated", 16) or 16) // 8)
        if len(value) < expected:
            return (f"pixel data has {len(value)} bytes, fewer than the {expected} bytes its Rows, Columns, frames "
                    "and BitsAllocated need: a truncated file")
    return None


def _inside(folder: Path, series: DicomSeries) -> bool:
    return any(p.parent == folder for p in series.files)


def _group_key(ds, path: Path) -> str:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    parts = (str(path.parent), _text(ds, "StudyInstanceUID"), _text(ds, "FrameOfReferenceUID"), _text(ds, "Modality"),
             _text(ds, "SeriesNumber"), _text(ds, "SeriesDescription"))
    return "nouid:" + "|".join(parts)


_SERIES_TAGS = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID",
                "SeriesDescription", "SeriesNumber", "PatientID", "StudyDate")


def _series_tags(ds) -> dict[str, str]:
    tags = {k: _text(ds, k) for k in _SERIES_TAGS}
    tags["SOPClassUID"] = _sop_class(ds)
    return tags


def _make_series(key: str, members: list[tuple[Path, dict[str, str], list[Frame]]]) -> DicomSeries:
    members = sorted(members, key=lambda m: str(m[0]))
    ds = members[0][1]
    files = tuple(m[0] for m in members)
    folder = Path(os.path.commonpath([str(p.parent) for p in files]))
    notes = []
    if key.startswith("nouid:"):
        notes.append("SeriesInstanceUID is empty: files grouped by folder, StudyInstanceUID, FrameOfReferenceUID, "
                     "Modality, SeriesNumber and SeriesDescription")
    return DicomSeries(key=key, folder=folder, files=files, frames=tuple(f for m in members for f in m[2]),
                       modality=ds["Modality"], series_uid=ds["SeriesInstanceUID"], study_uid=ds["StudyInstanceUID"],
                       frame_of_reference_uid=ds["FrameOfReferenceUID"], sop_class_uid=ds["SOPClassUID"],
                       description=ds["SeriesDescription"], series_number=ds["SeriesNumber"],
                       patient_id=ds["PatientID"], study_date=ds["StudyDate"], notes=tuple(notes))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitise_case_id(text: str, max_length: int = 96) -> str:
    """A file-name-safe id: runs of characters outside ``A-Za-z0-9._-`` become ``_``; no leading dot/underscore.

    Empty results become ``series``.
    """
    out = _UNSAFE.sub("_", text).strip("._-")
    return out[:max_length].rstrip("._-") or "series"


def assign_case_ids(series: Sequence[DicomSeries], root: Path, taken: Iterable[str] = ()) -> list[DicomSeries]:
    """Give each series its documented, sanitised, unique case id (module docstring); ``taken`` ids are avoided."""
    root = Path(root)
    by_folder: dict[Path, list[DicomSeries]] = defaultdict(list)
    for s in series:
        by_folder[s.folder].append(s)
    proposals: dict[str, str] = {}
    for folder, members in by_folder.items():
        rel = os.path.relpath(folder, root)
        base = root.resolve().name if rel == "." else rel.replace(os.sep, "_")
        numbers = [m.series_number for m in members]
        for m in members:
            if len(members) == 1:
                proposals[m.key] = base
            elif len(set(numbers)) == len(numbers) and all(numbers):
                proposals[m.key] = f"{base}_S{m.series_number}"
            else:
                proposals[m.key] = "_".join(p for p in (base, m.patient_id, m.study_date,
                                                        f"S{m.series_number}" if m.series_number else "") if p)
    counts: dict[str, int] = defaultdict(int)
    for v in proposals.values():
        counts[sanitise_case_id(v)] += 1
    used = set(taken)
    out = []
    for s in sorted(series, key=lambda s: (proposals[s.key], s.key)):
        cid = sanitise_case_id(proposals[s.key])
        if counts[cid] > 1 or cid in used:
            cid = sanitise_case_id(f"{cid}_{hashlib.sha1(s.key.encode()).hexdigest()[:8]}")
        used.add(cid)
        out.append(replace(s, case_id=cid))
    return out


def modality_mismatch(series: DicomSeries, channel_name: str) -> str | None:
    """Why ``series`` cannot feed a model channel called ``channel_name`` (None when it can or we cannot tell)."""
    want = MODALITY_ALIASES.get(channel_name.strip().upper().replace("-", "").replace(" ", ""))
    if want is None or not series.modality or series.modality.upper() == want:
        return None
    return (f"Modality is {series.modality} but the model's channel is '{channel_name}' (expects {want} series); "
            "pick the series with --series-filter modality=" + want)


# ----------------------------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class SeriesLayout:
    """The checked grid of a series: ``slices[k]`` lists the frames at the k-th position along the normal
    (more than one only for a slice sent twice, verified identical when the voxels are read)."""

    geometry: Geometry
    slices: tuple[tuple[Frame, ...], ...]
    notes: tuple[str, ...]

    @property
    def frames(self) -> tuple[Frame, ...]:
        """One frame per slice, in slice order (z = 0 first)."""
        return tuple(s[0] for s in self.slices)


def _mixed(values: Sequence, frames: Sequence[Frame], show: int = 3) -> str:
    seen: dict = {}
    for v, f in zip(values, frames):
        seen.setdefault(v, []).append(f)
    parts = []
    for v, fs in list(seen.items())[:show]:
        parts.append(f"{v} in {len(fs)} image(s), e.g. {fs[0].where}")
    more = f" and {len(seen) - show} more" if len(seen) > show else ""
    return "; ".join(parts) + more


def series_layout(series: DicomSeries) -> SeriesLayout:
    """Check the series' headers and compute its grid (no pixel data read).

    Raises:
        Seg3dError: naming the series and the values, for every case refused in the module docstring.
    """
    if series.broken_neighbours:
        raise series.error("unreadable file(s) in its folder, which may be slices of it: "
                           + "; ".join(series.broken_neighbours[:3])
                           + (f" (and {len(series.broken_neighbours) - 3} more)" if len(series.broken_neighbours) > 3
                              else ""))
    notes = list(series.notes)
    frames = [f for f in series.frames if not f.localizer]
    if len(frames) < len(series.frames):
        notes.append(f"left out {len(series.frames) - len(frames)} localizer/scout image(s) (ImageType LOCALIZER)")
    _check_uniform(series, frames)
    row, col, normal = _axes(series, frames[0])
    pos = np.array([f.position for f in frames], dtype=np.float64)
    along = pos @ normal
    order = np.lexsort((np.arange(len(frames)), along))
    slices: list[list[Frame]] = []
    last = None
    for i in order:
        if last is not None and abs(along[i] - last) < SAME_POSITION_MM:
            slices[-1].append(frames[i])
        else:
            slices.append([frames[i]])
            last = along[i]
    for group in slices:
        if len(group) > 1:
            sops = {f.sop_instance_uid for f in group}
            if len(sops) == 1 and sops != {""} and len({(f.path, f.frame) for f in group}) > 1:
                notes.append(f"{group[0].where} and {group[1].where} are the same instance sent twice: read once")
    if len(slices) < MIN_SLICES:
        raise series.error(f"too few slices: {len(slices)} distinct position(s) (at least {MIN_SLICES} are needed "
                           "to check the spacing of a 3D volume)")
    d = np.array([np.asarray(g[0].position) @ normal for g in slices])
    steps = np.diff(d)
    median = float(np.median(steps))
    uniform = d[0] + np.arange(len(d)) * (d[-1] - d[0]) / (len(d) - 1)
    off = float(np.abs(d - uniform).max())  # how far a uniform grid would misplace a slice
    tol = max(SPACING_TOL * (d[-1] - d[0]) / (len(d) - 1), SPACING_ATOL_MM)
    if off > tol:
        k = int(np.argmax(np.abs(steps - median)))
        differ = int((np.abs(steps - median) > tol).sum())
        kind = "a gap (missing slices?)" if steps[k] > median else "slices closer than the rest"
        raise series.error(
            f"non-uniform slice spacing: steps are {median:.4g} mm but {differ} step(s) differ, the largest "
            f"{steps[k]:.4g} mm between {slices[k][0].where} (at {d[k]:.4g} mm along the normal) and "
            f"{slices[k + 1][0].where} (at {d[k + 1]:.4g} mm): {kind}; a uniform grid would misplace slices by "
            f"up to {off:.3g} mm")
    first = np.asarray(slices[0][0].position)
    rel = np.array([g[0].position for g in slices]) - first
    drift = rel - np.outer(rel @ normal, normal)
    max_drift = float(np.linalg.norm(drift, axis=1).max())
    ps = frames[0].pixel_spacing
    if max_drift > SHEAR_TOL_VOXELS * min(ps):
        extent = float(d[-1] - d[0])
        angle = float(np.degrees(np.arctan2(max_drift, extent)))
        raise series.error(
            f"sheared grid (gantry tilt): slice positions drift {max_drift:.3g} mm in-plane over {extent:.4g} mm "
            f"(about {angle:.2f} degrees off the slice normal; or slices of different fields of view); seg3d "
            "does not resample tilted series: ask for a reconstruction without tilt, or resample it first")
    spacing_z = float(d[-1] - d[0]) / (len(slices) - 1)
    direction = np.stack([row, col, normal], axis=1)
    geometry = Geometry((frames[0].columns, frames[0].rows, len(slices)),
                        (float(ps[1]), float(ps[0]), spacing_z), tuple(float(v) for v in first),
                        tuple(float(v) for v in direction.ravel()))
    return SeriesLayout(geometry, tuple(tuple(g) for g in slices), tuple(notes))


def _check_uniform(series: DicomSeries, frames: list[Frame]) -> None:
    if not frames:
        raise series.error("no image other than localizers")
    sizes = [(f.rows, f.columns) for f in frames]
    if len(set(sizes)) > 1:
        raise series.error(f"mixed image sizes (Rows, Columns): {_mixed(sizes, frames)}")
    ori = np.array([f.orientation for f in frames])
    if np.abs(ori - ori[0]).max() > ORIENTATION_ATOL:
        vals = [tuple(round(v, 4) for v in f.orientation) for f in frames]
        raise series.error(f"mixed orientations (ImageOrientationPatient): {_mixed(vals, frames)}")
    ps = np.array([f.pixel_spacing for f in frames])
    if (np.abs(ps - ps[0]) > PIXEL_SPACING_RTOL * np.abs(ps[0])).any():
        raise series.error(f"mixed pixel spacings (PixelSpacing): {_mixed([f.pixel_spacing for f in frames], frames)}")
    recon = [f.reconstruction for f in frames]
    if len(set(recon)) > 1:
        raise series.error("two or more reconstructions share this series (ConvolutionKernel, SliceThickness): "
                           f"{_mixed(recon, frames)}; export them as separate series")


def _axes(series: DicomSeries, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.asarray(frame.orientation, dtype=np.float64)
    row, col = o[:3], o[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise series.error(f"ImageOrientationPatient {tuple(o)} is not two orthogonal unit vectors ({frame.where})")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def series_geometry(series: DicomSeries) -> Geometry:
    """The series' grid from its headers only (fast; for ``--continue`` and checks)."""
    return series_layout(series).geometry


# ------------------------------------------------------------------------------------------------- voxels

def _decode(path: Path, series: DicomSeries) -> np.ndarray:
    """All frames of a file as ``(frames, rows, columns)``, with a clear error for anything undecodable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001
        raise series.error(f"cannot read {path} ({type(e).__name__}: {e})") from None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise series.error(f"{path} is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); seg3d reads "
                           "grey-level series only")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated data, missing decoder, damaged stream
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        name = getattr(syntax, "name", str(syntax))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise series.error(f"cannot decode the pixel data of {path} (transfer syntax {name}): {msg}; a "
                           "truncated or damaged file, or a compression no installed decoder handles") from None
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return arr.reshape((n,) + arr.shape[-2:]) if n > 1 else arr[None]


def read_series(series: DicomSeries) -> tuple[np.ndarray, Geometry, tuple[str, ...]]:
    """Decode a series into a float32 ``(z, y, x)`` volume in slice order, with rescale applied.

    Returns:
        ``(array, geometry, notes)``: notes say what was left out or merged (localizers, slices sent twice,
        missing UIDs).

    Raises:
        Seg3dError: for every refusal of :func:`series_layout`, undecodable or truncated pixel data, and two
        different images at one position.
    """
    layout = series_layout(series)
    cache: dict[Path, np.ndarray] = {}
    notes = list(layout.notes)

    def pixels(frame: Frame) -> np.ndarray:
        if frame.path not in cache:
            cache[frame.path] = _decode(frame.path, series)
        data = cache[frame.path]
        if data.shape[1:] != (frame.rows, frame.columns):
            raise series.error(f"{frame.where}: decoded size {data.shape[1:]} != Rows/Columns "
                               f"{(frame.rows, frame.columns)}")
        raw = data[frame.frame or 0].astype(np.float64)
        return raw * frame.slope + frame.intercept

    out = np.empty(layout.geometry.shape, dtype=np.float32)
    for z, group in enumerate(layout.slices):
        first = pixels(group[0])
        for other in group[1:]:
            if not np.array_equal(first, pixels(other)):
                raise series.error(
                    f"two different images at one position ({group[0].where} and {other.where}, "
                    f"{np.asarray(group[0].position).round(3).tolist()}): two reconstructions, echoes or time points "
                    "share this series; export them as separate series")
            if group[0].sop_instance_uid != other.sop_instance_uid or not other.sop_instance_uid:
                notes.append(f"{other.where} repeats {group[0].where} (same position, identical voxels): read once")
        out[z] = first
        if len(cache) > 64 and all(f.frame is None for f in group):
            cache.clear()  # one-file-per-slice: keep memory bounded
    return out, layout.geometry, tuple(notes)
