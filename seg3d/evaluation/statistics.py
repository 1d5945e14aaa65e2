"""Per-structure statistics of a predicted mask on its input image (``seg3d predict --statistics``).

For every class of the model (absent ones too, with volume 0 and empty intensity fields):

* ``voxel_count`` and ``volume_ml`` (voxel count x voxel volume);
* ``mean``, ``std`` (population, ddof 0), ``median``, ``min``, ``max`` of the input intensity inside the
  structure, on the input grid (first channel; HU for CT read from DICOM or NIfTI);
* ``bbox_min``/``bbox_max``: the axis-aligned box enclosing the structure's voxel centres, and ``centroid``:
  the mean of its voxel centres, both in millimetres in **LPS** patient coordinates (x to the patient's left,
  y posterior, z superior: the DICOM and ITK convention; NIfTI viewers show RAS, i.e. x and y negated);
* ``components``: the number of 26-connected components (connected-components-3d).

Vectorised: one ``scipy.ndimage.find_objects`` pass gives each class's index box, then numpy on that box.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from seg3d.atomic import write_json_atomic, write_text_atomic
from seg3d.io.image import Geometry

COORDINATES = "LPS"
COORDINATES_NOTE = ("LPS patient coordinates in mm (DICOM/ITK: +x left, +y posterior, +z superior); "
                    "RAS = (-x, -y, z)")
CSV_COLUMNS = ("case", "structure", "label", "voxel_count", "volume_ml", "mean", "std", "median", "min", "max",
               "centroid_x_lps_mm", "centroid_y_lps_mm", "centroid_z_lps_mm",
               "bbox_min_x_lps_mm", "bbox_min_y_lps_mm", "bbox_min_z_lps_mm",
               "bbox_max_x_lps_mm", "bbox_max_y_lps_mm", "bbox_max_z_lps_mm", "components")
_SLAB = 16  # slices per step when an oblique box is scanned for its exact extent


def _world(geometry: Geometry, index_xyz: np.ndarray) -> np.ndarray:
    """World (LPS, mm) of voxel indices ``(N, 3)`` in (x, y, z) order."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    return np.asarray(geometry.origin) + (np.asarray(index_xyz, np.float64) * np.asarray(geometry.spacing)) @ d.T


def _axis_aligned(geometry: Geometry) -> bool:
    d = np.abs(np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3))
    return bool(np.all((d < 1e-9) | (np.abs(d - 1) < 1e-9)))


def _extent(sub: np.ndarray, offset: tuple[int, int, int], geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Exact min and max world coordinates over the voxel centres of ``sub`` (a box of the mask at ``offset``)."""
    z0, y0, x0 = offset
    nz, ny, nx = sub.shape
    if _axis_aligned(geometry):  # the box's corners are voxels' extremes along every world axis
        zs, ys, xs = (np.nonzero(sub.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1)))
        corners = np.array([[x, y, z] for z in (zs[0] + z0, zs[-1] + z0) for y in (ys[0] + y0, ys[-1] + y0)
                            for x in (xs[0] + x0, xs[-1] + x0)])
        w = _world(geometry, corners)
        return w.min(axis=0), w.max(axis=0)
    a = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3) * np.asarray(geometry.spacing)
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    y = np.arange(ny, dtype=np.float64)[None, :, None] + y0
    x = np.arange(nx, dtype=np.float64)[None, None, :] + x0
    for s in range(0, nz, _SLAB):
        part = sub[s:s + _SLAB]
        if not part.any():
            continue
        z = np.arange(s, s + part.shape[0], dtype=np.float64)[:, None, None] + z0
        for k in range(3):
            f = a[k, 0] * x + a[k, 1] * y + a[k, 2] * z
            vals = np.broadcast_to(f, part.shape)[part]
            lo[k], hi[k] = min(lo[k], vals.min()), max(hi[k], vals.max())
    origin = np.asarray(geometry.origin)
    return origin + lo, origin + hi


def _components(sub: np.ndarray) -> int:
    import cc3d

    _, n = cc3d.connected_components(sub.astype(np.uint8, copy=False), connectivity=26, return_N=True)
    return int(n)


def structure_statistics(image: np.ndarray, mask: np.ndarray, geometry: Geometry,
                         labels: dict[str, int]) -> list[dict]:
    """One record per non-background class of ``labels`` (in label order).

    Args:
        image: intensities ``(z, y, x)`` (or ``(C, z, y, x)``: the first channel is used) on the mask's grid.
        mask: label values ``(z, y, x)``.
        geometry: the grid of both (SimpleITK order), for millimetres and patient coordinates.
        labels: ``{name: value}`` as in dataset.json.

    Returns:
        Records with the keys of :data:`CSV_COLUMNS` (less ``case``); ``bbox_min``, ``bbox_max`` and ``centroid``
        as ``[x, y, z]`` LPS mm; intensity and coordinate fields are ``None`` for an absent structure.

    Raises:
        ValueError: image and mask shapes differ, or the mask holds negative values.
    """
    from scipy import ndimage

    img = image[0] if image.ndim == 4 else image
    if img.shape != mask.shape:
        raise ValueError(f"image shape {img.shape} != mask shape {mask.shape}")
    if mask.size and mask.min() < 0:
        raise ValueError("mask holds negative label values")
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    classes = sorted(((n, int(v)) for n, v in labels.items() if int(v) != 0), key=lambda nv: nv[1])
    boxes = ndimage.find_objects(mask.astype(np.int32, copy=False)) if mask.size else []
    out = []
    for name, value in classes:
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        rec = {"structure": name, "label": value, "voxel_count": 0, "volume_ml": 0.0, "mean": None, "std": None,
               "median": None, "min": None, "max": None, "centroid": None, "bbox_min": None, "bbox_max": None,
               "components": 0}
        if box is not None:
            sub = mask[box] == value
            vals = img[box][sub].astype(np.float64)
            n = int(vals.size)
            offset = tuple(int(s.start) for s in box)
            zc, yc, xc = ((np.arange(sub.shape[i]) * sub.sum(axis=tuple(j for j in range(3) if j != i))).sum() / n
                          + offset[i] for i in range(3))
            lo, hi = _extent(sub, offset, geometry)
            rec.update(voxel_count=n, volume_ml=n * voxel_ml, mean=float(vals.mean()), std=float(vals.std()),
                       median=float(np.median(vals)), min=float(vals.min()), max=float(vals.max()),
                       centroid=[float(v) for v in _world(geometry, np.array([[xc, yc, zc]]))[0]],
                       bbox_min=[float(v) for v in lo], bbox_max=[float(v) for v in hi],
                       components=_components(sub))
        out.append(rec)
    return out


def case_statistics_document(case_id: str, records: list[dict], geometry: Geometry, source: str = "") -> dict:
    """The ``statistics.json`` of one case."""
    return {"case": case_id, "source": source, "coordinates": COORDINATES, "coordinates_note": COORDINATES_NOTE,
            "intensity": "input image, first channel, on the input grid (HU for CT)", "std": "population (ddof 0)",
            "voxel_volume_ml": float(np.prod(geometry.spacing)) / 1000.0, "components_connectivity": 26,
            "structures": records}


def write_case_statistics(path: str | Path, case_id: str, records: list[dict], geometry: Geometry,
                          source: str = "") -> None:
    write_json_atomic(path, case_statistics_document(case_id, records, geometry, source))


def csv_rows(case_id: str, records: list[dict]) -> list[dict]:
    """Flat rows (one per structure) with :data:`CSV_COLUMNS`."""
    rows = []
    for r in records:
        row = {"case": case_id, **{k: r[k] for k in ("structure", "label", "voxel_count", "volume_ml", "mean", "std",
                                                      "median", "min", "max", "components")}}
        for key, prefix in (("centroid", "centroid"), ("bbox_min", "bbox_min"), ("bbox_max", "bbox_max")):
            for axis, v in zip("xyz", r[key] or (None, None, None)):
                row[f"{prefix}_{axis}_lps_mm"] = v
        rows.append(row)
    return rows


def write_cohort_csv(path: str | Path, rows: list[dict]) -> None:
    """``statistics.csv``: one row per case and structure; empty cells for absent structures' intensities."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
