"""``seg3d convert dicom DIR -o DATASET``: labelled DICOM data into the nnU-Net v2 layout, for training.

Images come from DICOM series read by :mod:`seg3d.io.dicom` (the reader ``seg3d predict`` uses, so training
and prediction see the same geometry); labels come from the DICOM-SEG objects found beside them
(:mod:`seg3d.io.dicom_seg`), mapped onto the slices of the series they reference.

* A series referenced by a SEG becomes ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``; a series
  without one becomes ``imagesTs/<case>_0000.nii.gz``. Case ids follow the reader's rule.
* Label values: every segment label seen in any SEG gets one value, 1..K, ordered by the smallest segment
  number it had, then by name (``dataset.json`` lists them). Overlapping segments are refused (a label map
  holds one class per voxel).
* Images are int16 where every slope and intercept is integral and the values fit (CT in HU), else float32.
* A series or SEG that fails is reported with its reason; the others are converted. The output folder must
  not hold a dataset already.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic
from seg3d.errors import Seg3dError
from seg3d.io.dicom import DicomSeries, SeriesFilter, discover_series, read_series, series_layout
from seg3d.io.dicom_seg import read_dicom_seg, referenced_series_uids
from seg3d.io.image import write_image
from seg3d.progress import ProgressFn, report

CHANNEL_NAMES = {"CT": "CT", "MR": "MR", "PT": "PET", "NM": "NM", "US": "US"}


@dataclass
class ConvertResult:
    training: list[str] = field(default_factory=list)  # case ids with a label
    test: list[str] = field(default_factory=list)  # case ids without one
    labels: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def to_dict(self) -> dict:
        return {"training": self.training, "test": self.test, "labels": self.labels,
                "failed": [{"what": w, "error": e} for w, e in self.failed],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def _image_dtype(series: DicomSeries, array: np.ndarray) -> type:
    integral = all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in series.frames)
    if integral and array.size and array.min() >= -32768 and array.max() <= 32767:
        return np.int16
    return np.float32


def _label_values(segs: dict[str, list[dict[int, str]]]) -> dict[str, int]:
    first: dict[str, int] = {}
    for per_case in segs.values():
        for names in per_case:
            for number, name in names.items():
                first[name] = min(first.get(name, number), number)
    ordered = sorted(first, key=lambda n: (first[n], n))
    return {"background": 0, **{n: i for i, n in enumerate(ordered, start=1)}}


def convert_dicom(in_dir: str | Path, out_dir: str | Path, dataset_name: str | None = None,
                  series_filter: SeriesFilter | None = None, progress: ProgressFn | None = None) -> ConvertResult:
    """Convert every series under ``in_dir`` (and its DICOM-SEG labels) into an nnU-Net v2 dataset ``out_dir``.

    Raises:
        Seg3dError: ``in_dir`` is not a folder, ``out_dir`` already holds a dataset, or no series was found.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if (out_dir / "dataset.json").exists() or (out_dir.is_dir() and any(out_dir.iterdir())):
        raise Seg3dError("output folder is not empty: choose a new folder for the dataset", out_dir)
    inv = discover_series(in_dir, series_filter)
    result = ConvertResult(skipped=[(str(p), r) for p, r in inv.skipped])
    result.failed.extend((str(p), r) for p, r in inv.problems)
    if not inv.series:
        raise Seg3dError("no DICOM image series found" + (f" ({len(inv.skipped)} file(s) skipped, "
                                                          f"{len(inv.problems)} unreadable)" if inv.skipped or
                                                          inv.problems else ""), in_dir)
    by_uid = {s.series_uid: s for s in inv.series if s.series_uid}
    seg_files: dict[str, list[Path]] = {}
    for path in inv.segmentations:
        try:
            refs = referenced_series_uids(path)
        except Exception as e:  # noqa: BLE001
            result.failed.append((str(path), f"cannot read DICOM-SEG header ({type(e).__name__}: {e})"))
            continue
        hits = [by_uid[u].case_id for u in refs if u in by_uid]
        if not hits:
            why = (f"DICOM-SEG references series {sorted(refs) or '(none)'}, none of which was found (or passed "
                   "--series-filter) under the input folder")
            result.failed.append((str(path), why))
            continue
        for cid in hits:
            seg_files.setdefault(cid, []).append(path)

    total = len(inv.series)
    masks: dict[str, list[tuple[np.ndarray, dict[int, str]]]] = {}
    images = {}
    report(progress, 0, total, "")
    for i, series in enumerate(inv.series):
        cid = series.case_id
        try:
            layout = series_layout(series)
            array, geometry, _ = read_series(series)
            segs = [read_dicom_seg(p, series, layout) for p in seg_files.get(cid, [])]
        except Seg3dError as e:
            result.failed.append((cid, str(e)))
            report(progress, i + 1, total, cid)
            continue
        images[cid] = (series, array, geometry)
        if segs:
            masks[cid] = segs
        report(progress, i + 1, total, cid)

    labels = _label_values({c: [names for _, names in segs] for c, segs in masks.items()})
    result.labels = labels
    modalities = sorted({s.modality for s, _, _ in images.values()})
    for cid, (series, array, geometry) in images.items():
        folder = "imagesTr" if cid in masks else "imagesTs"
        write_image(array.astype(_image_dtype(series, array)), geometry, out_dir / folder / f"{cid}_0000.nii.gz")
        if cid in masks:
            label = np.zeros(array.shape, np.uint16)
            for numbers, names in masks[cid]:
                lut = np.zeros(max(names, default=0) + 1, np.uint16)
                for number, name in names.items():
                    lut[number] = labels[name]
                values = lut[numbers]
                clash = (label > 0) & (values > 0) & (label != values)
                if clash.any():
                    why = f"DICOM-SEGs of this series overlap at {int(clash.sum())} voxel(s); labels from the first kept"
                    result.failed.append((cid, why))
                label = np.where(label > 0, label, values)
            write_image(label.astype(np.uint8 if len(labels) < 256 else np.uint16), geometry,
                        out_dir / "labelsTr" / f"{cid}.nii.gz")
            result.training.append(cid)
        else:
            result.test.append(cid)
    channel = CHANNEL_NAMES.get(modalities[0], modalities[0]) if len(modalities) == 1 else "image"
    write_json_atomic(out_dir / "dataset.json", {
        "name": dataset_name or out_dir.name, "description": f"converted from DICOM ({in_dir}) by seg3d convert dicom",
        "channel_names": {"0": channel}, "labels": labels, "numTraining": len(result.training),
        "file_ending": ".nii.gz"})
    write_json_atomic(out_dir / "conversion.json", result.to_dict())
    return result
