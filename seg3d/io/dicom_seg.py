"""DICOM-SEG out (and back in), with highdicom, on the grid of the DICOM series it was predicted from.

* One segment per class of the model's ``dataset.json`` labels (background excluded), numbered 1..K in the
  order of the labels, labelled with the class name; classes absent from a mask are still described.
* Every segment carries the algorithm identification: family "Artificial Intelligence", name
  ``seg3d <model name>``, the seg3d version, and the model's weights checksum as a parameter.
* The SEG references every source instance it was computed from (one per slice, in slice order) and the
  series' FrameOfReferenceUID; highdicom validates it on creation; the file is written atomically.
* A series without SOP Instance / Series / Study UIDs cannot be referenced: :func:`reference_problem` says so
  in one line and the caller writes the NIfTI alone.

:func:`read_dicom_seg` maps a SEG (ours or another tool's) back onto a series' slices, for ``seg3d convert``
and for the read-back test.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg3d.atomic import write_with_atomic
from seg3d.errors import Seg3dError
from seg3d.io.dicom import DicomSeries, SeriesLayout, series_layout

SEG_ENDING = ".dcm"
PRIVATE_SCHEME = "99SEG3D"  # private coding scheme for class names without a standard code


@dataclass(frozen=True)
class SegAlgorithm:
    """What produced the mask: written into every segment's AlgorithmIdentificationSequence."""

    model_name: str
    seg3d_version: str
    model_checksum: str = ""


def reference_problem(series: DicomSeries) -> str | None:
    """One line saying why a DICOM-SEG cannot reference ``series`` (None when it can)."""
    missing = [n for n, v in (("StudyInstanceUID", series.study_uid), ("SeriesInstanceUID", series.series_uid),
                              ("FrameOfReferenceUID", series.frame_of_reference_uid)) if not v]
    if any(not f.sop_instance_uid for f in series.frames):
        missing.append("SOPInstanceUID")
    if missing:
        return (f"no DICOM-SEG for {series.label}: its {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} empty, so a SEG could not reference it (NIfTI written)")
    return None


def _source_datasets(layout: SeriesLayout):
    """Headers of the instances behind the slices, in slice order (multi-frame: the one file)."""
    import pydicom

    paths = list(dict.fromkeys(f.path for f in layout.frames))
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def segment_descriptions(labels: dict[str, int], algorithm: SegAlgorithm):
    """highdicom SegmentDescriptions, one per non-background class, numbered 1..K in label order."""
    import highdicom as hd

    codes = _codes()
    params = {"model_checksum": algorithm.model_checksum} if algorithm.model_checksum else None
    ident = hd.AlgorithmIdentificationSequence(name=f"seg3d {algorithm.model_name}"[:64],
                                               family=codes.cid7162.ArtificialIntelligence,
                                               version=algorithm.seg3d_version, source="seg3d", parameters=params)
    out = []
    for number, (name, value) in enumerate(_classes(labels), start=1):
        prop = hd.sr.CodedConcept(value=str(value), scheme_designator=PRIVATE_SCHEME, meaning=name[:64])
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident))
    return out


def _classes(labels: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(((n, int(v)) for n, v in labels.items() if int(v) != 0), key=lambda nv: nv[1])


def write_dicom_seg(mask: np.ndarray, series: DicomSeries, path: str | Path, labels: dict[str, int],
                    algorithm: SegAlgorithm, layout: SeriesLayout | None = None) -> None:
    """Write ``mask`` (label values, ``(z, y, x)`` on the series' grid as :func:`read_series` returns it).

    Raises:
        Seg3dError: the series cannot be referenced (:func:`reference_problem`), the mask does not fit the
            series' grid, it holds values that are not labels, or highdicom refuses the result.
    """
    import highdicom as hd

    problem = reference_problem(series)
    if problem:
        raise Seg3dError(problem, series.folder)
    layout = layout or series_layout(series)
    if tuple(mask.shape) != layout.geometry.shape:
        raise Seg3dError(f"mask shape {mask.shape} != the series' grid {layout.geometry.shape}", path)
    classes = _classes(labels)
    lut = np.zeros(max([v for _, v in classes] + [int(mask.max(initial=0))]) + 1, dtype=np.uint16)
    for number, (_, value) in enumerate(classes, start=1):
        lut[value] = number
    stray = sorted(set(np.unique(mask).tolist()) - {0} - {v for _, v in classes})
    if stray:
        raise Seg3dError(f"mask holds value(s) {stray} that are not labels of the model {dict(classes)}", path)
    numbers = lut[mask.astype(np.int64)]
    numbers = numbers.astype(np.uint8 if len(classes) < 256 else np.uint16)
    sources = _source_datasets(layout)
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        # enhanced multi-frame: the SEG's frames follow the source file's frame order
        order = [f.frame for f in layout.frames]
        if sorted(order) != list(range(int(sources[0].NumberOfFrames))):
            raise Seg3dError(f"{series.label}: frames left out of the volume (localizers, repeats); a DICOM-SEG "
                             "of a partial multi-frame file is not written (NIfTI written)", series.folder)
        frames = np.empty_like(numbers)
        frames[np.asarray(order)] = numbers
        numbers = frames
    descriptions = segment_descriptions(labels, algorithm)
    try:
        number = int(str(series.series_number or "0").split(".")[0] or 0)
    except ValueError:
        number = 0
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=numbers, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=number % 10000 + 9000,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="seg3d",
            manufacturer_model_name=algorithm.model_name[:64] or "seg3d model",
            software_versions=f"seg3d {algorithm.seg3d_version}", device_serial_number=(algorithm.model_checksum
                                                                                      or "unknown")[:16],
            series_description=f"seg3d {algorithm.model_name}"[:64], omit_empty_frames=True)
    except (ValueError, TypeError, AttributeError) as e:
        raise Seg3dError(f"highdicom refused the DICOM-SEG for {series.label}: {e}", path) from None
    write_with_atomic(path, lambda tmp: seg.save_as(tmp))


def read_dicom_seg(path: str | Path, series: DicomSeries, layout: SeriesLayout | None = None
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """A DICOM-SEG mapped onto ``series``' slices: ``(segment numbers (z, y, x) uint16, {number: label})``.

    Raises:
        Seg3dError: the SEG is unreadable, does not reference this series' instances, or its segments overlap
            (a label map cannot hold two classes in one voxel).
    """
    import highdicom as hd

    path = Path(path)
    layout = layout or series_layout(series)
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # noqa: BLE001
        raise Seg3dError(f"cannot read DICOM-SEG ({type(e).__name__}: {e})", path) from None
    names = {int(n): seg.get_segment_description(int(n)).segment_label for n in seg.get_segment_numbers()}
    frames = layout.frames
    try:
        if frames[0].frame is not None:
            arr = seg.get_pixels_by_source_frame(str(frames[0].sop_instance_uid),
                                                 source_frame_numbers=[f.frame + 1 for f in frames],
                                                 combine_segments=True, relabel=False, dtype=np.uint16,
                                                 assert_missing_frames_are_empty=True)
        else:
            arr = seg.get_pixels_by_source_instance([f.sop_instance_uid for f in frames], combine_segments=True,
                                                    relabel=False, dtype=np.uint16)
    except Exception as e:  # noqa: BLE001 - highdicom raises ValueError/KeyError/RuntimeError for these
        raise Seg3dError(f"DICOM-SEG does not fit {series.label}: {e}", path) from None
    if arr.shape != layout.geometry.shape:
        raise Seg3dError(f"DICOM-SEG gives shape {arr.shape}, the series {layout.geometry.shape}", path)
    return np.asarray(arr, dtype=np.uint16), names


def referenced_series_uids(path: str | Path) -> set[str]:
    """SeriesInstanceUIDs a DICOM-SEG references (ReferencedSeriesSequence), read from its header only."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])} - {""}
