"""Synthetic DICOM series whose truth we know because we build them (pydicom), for the reader's tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def _uid():
    from pydicom.uid import generate_uid

    return generate_uid()


def base_dataset(sop_class: str, modality: str, study_uid: str, series_uid: str, for_uid: str, *,
                 series_number=1, description="synthetic", patient_id="P001"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop = _uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", patient_id, "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
    ds.Manufacturer = "seg3d-tests"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(folder: Path, stored: np.ndarray, *, spacing=(0.8, 0.7, 2.5), origin=(-30.0, -40.0, 10.0),
                 row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0), slopes=1.0, intercepts=-1024.0, modality="CT",
                 series_uid: str | None = None, study_uid: str | None = None, for_uid: str | None = None,
                 positions=None, orientations=None, pixel_spacings=None, kernels=None, image_types=None,
                 names=None, series_number=1, description="synthetic", order=None) -> list[Path]:
    """Write ``stored`` (z, y, x) int16 as one file per slice; slice k sits at origin + k*spacing_z*normal.

    ``spacing`` is (x, y, z) like Geometry; per-slice overrides (positions, orientations, slopes ...) are lists.
    Files are written in ``order`` (default: reversed) with names that do not sort like the slices.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    series_uid = _uid() if series_uid is None else series_uid
    study_uid = _uid() if study_uid is None else study_uid
    for_uid = _uid() if for_uid is None else for_uid
    nz = stored.shape[0]
    order = list(reversed(range(nz))) if order is None else order
    paths = []
    for n, k in enumerate(order):
        ds = base_dataset(CT_IMAGE, modality, study_uid, series_uid, for_uid, series_number=series_number,
                          description=description)
        if series_uid == "":
            ds.SOPInstanceUID = ""
        pos = (np.asarray(origin) + k * spacing[2] * normal) if positions is None else np.asarray(positions[k])
        ori = list(row) + list(col) if orientations is None else list(orientations[k])
        ps = [spacing[1], spacing[0]] if pixel_spacings is None else list(pixel_spacings[k])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in ori]
        ds.PixelSpacing = [f"{v:.6f}" for v in ps]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.ConvolutionKernel = "B30f" if kernels is None else kernels[k]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if image_types is None else image_types[k]
        ds.RescaleSlope = f"{(slopes[k] if np.ndim(slopes) else slopes):.8g}"
        ds.RescaleIntercept = f"{(intercepts[k] if np.ndim(intercepts) else intercepts):.8g}"
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelData = np.ascontiguousarray(stored[k].astype(np.int16)).tobytes()
        name = names[k] if names is not None else f"IMG{(7919 * (k + 3)) % 10007:05d}"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(path: Path, stored: np.ndarray, *, spacing=(0.8, 0.7, 2.5), origin=(-30.0, -40.0, 10.0),
                     row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0), frame_order=None, slopes=None,
                     with_positions=True) -> Path:
    """One enhanced CT file; frame ``i`` holds slice ``frame_order[i]`` (out of order when asked)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    nz = stored.shape[0]
    frame_order = list(range(nz)) if frame_order is None else list(frame_order)
    ds = base_dataset(ENHANCED_CT_IMAGE, "CT", _uid(), _uid(), _uid())
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = nz, stored.shape[1:]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [spacing[1], spacing[0]], spacing[2]
    po = Dataset()
    po.ImageOrientationPatient = list(row) + list(col)
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    if slopes is None:
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
        shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in frame_order:
        item = Dataset()
        if with_positions:
            pp = Dataset()
            pp.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
            item.PlanePositionSequence = Sequence([pp])
        if slopes is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slopes[k], 0, "US"
            item.PixelValueTransformationSequence = Sequence([pvt])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.ascontiguousarray(stored[frame_order].astype(np.int16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def truth_volume(shape=(6, 10, 12), seed=0) -> np.ndarray:
    """Stored values (int16) that differ on every slice, so a mis-sorted slice is caught."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 2000, size=shape).astype(np.int16)
    vol[:, 0, 0] = np.arange(shape[0]) * 10  # slice index readable in a corner
    return vol


def physical_point(geometry, index_xyz) -> np.ndarray:
    """World coordinates of a voxel index (x, y, z), the ITK way."""
    d = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + d @ (np.asarray(index_xyz, float) * np.asarray(geometry.spacing))
