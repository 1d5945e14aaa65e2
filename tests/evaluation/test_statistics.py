"""Per-structure statistics cross-checked against independent computations (SimpleITK, per-voxel loops, scipy)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from seg3d.evaluation.statistics import (
    CSV_COLUMNS,
    csv_rows,
    structure_statistics,
    write_case_statistics,
    write_cohort_csv,
)
from seg3d.io.image import Geometry

LABELS = {"background": 0, "organ": 1, "lesion": 3, "absent": 4}


def _case(oblique: bool):
    rng = np.random.default_rng(0)
    shape = (9, 14, 16)
    image = rng.normal(40, 25, size=shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[2:7, 3:10, 4:12] = 1
    mask[1:3, 11:13, 1:3] = 3  # two separate lesions ...
    mask[6:8, 11:13, 13:15] = 3
    mask[7, 1, 1] = 3  # ... and a third one touching nothing
    if oblique:
        a = np.radians(30)
        r = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
            np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
        geo = Geometry((16, 14, 9), (0.7, 0.9, 2.5), (10.0, -20.0, 5.0), tuple(r.ravel()))
    else:
        geo = Geometry((16, 14, 9), (0.7, 0.9, 2.5), (10.0, -20.0, 5.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image, mask, geo


def _sitk(a, geo):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(a)
    geo.apply_to(img)
    return img


@pytest.mark.parametrize("oblique", [False, True])
def test_statistics_match_simpleitk_and_per_voxel_loops(oblique):
    import SimpleITK as sitk
    from scipy import ndimage

    image, mask, geo = _case(oblique)
    recs = {r["structure"]: r for r in structure_statistics(image, mask, geo, LABELS)}
    assert list(recs) == ["organ", "lesion", "absent"]
    f = sitk.LabelIntensityStatisticsImageFilter()
    f.Execute(_sitk(mask, geo), _sitk(image, geo))
    for name, value in (("organ", 1), ("lesion", 3)):
        r = recs[name]
        n = f.GetNumberOfPixels(value)
        assert r["voxel_count"] == n
        assert r["volume_ml"] == pytest.approx(f.GetPhysicalSize(value) / 1000)
        assert r["mean"] == pytest.approx(f.GetMean(value), rel=1e-6)
        assert r["min"] == pytest.approx(f.GetMinimum(value)) and r["max"] == pytest.approx(f.GetMaximum(value))
        assert r["std"] == pytest.approx(f.GetStandardDeviation(value) * np.sqrt((n - 1) / n), rel=1e-5)
        assert r["centroid"] == pytest.approx(list(f.GetCentroid(value)), abs=1e-6)
        # per-voxel loop: every voxel centre through the image's own index->physical mapping
        pts, vals = [], []
        img = _sitk(image, geo)
        for z, y, x in zip(*np.nonzero(mask == value)):
            pts.append(img.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
            vals.append(float(image[z, y, x]))
        pts = np.array(pts)
        assert r["median"] == pytest.approx(float(np.median(vals)))
        assert r["bbox_min"] == pytest.approx(pts.min(axis=0).tolist(), abs=1e-6)
        assert r["bbox_max"] == pytest.approx(pts.max(axis=0).tolist(), abs=1e-6)
        _, ncomp = ndimage.label(mask == value, structure=np.ones((3, 3, 3)))
        assert r["components"] == ncomp
    assert recs["lesion"]["components"] == 3
    absent = recs["absent"]
    assert absent["voxel_count"] == 0 and absent["volume_ml"] == 0 and absent["mean"] is None


def test_statistics_files_state_the_convention_and_keep_absent_rows(tmp_path):
    image, mask, geo = _case(False)
    recs = structure_statistics(image, mask, geo, LABELS)
    write_case_statistics(tmp_path / "statistics.json", "c1", recs, geo, source="c1_0000.nii.gz")
    doc = json.loads((tmp_path / "statistics.json").read_text())
    assert doc["coordinates"] == "LPS" and len(doc["structures"]) == 3
    rows = csv_rows("c1", recs) + csv_rows("c2", structure_statistics(image, np.zeros_like(mask), geo, LABELS))
    write_cohort_csv(tmp_path / "statistics.csv", rows)
    with open(tmp_path / "statistics.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS and "centroid_x_lps_mm" in table[0]
    assert len(table) == 6  # 2 cases x 3 structures, absent ones included
    c2 = [r for r in table if r["case"] == "c2"]
    assert all(r["volume_ml"] == "0" and r["mean"] == "" for r in c2)


def test_preview_png_has_three_views_and_a_legend_of_present_classes(tmp_path):
    from matplotlib.image import imread

    from seg3d.evaluation.figures import preview

    image, mask, geo = _case(True)
    present = preview(image, mask, geo, LABELS, tmp_path / "c1.png", title="c1")
    assert present == ["organ", "lesion"]  # "absent" is not in the legend
    png = imread(tmp_path / "c1.png")
    assert png.shape[0] > 300 and png.shape[1] > 900
    # the overlay colours appear: some pixels are neither grey nor white
    rgb = png[..., :3]
    assert (np.ptp(rgb, axis=-1) > 0.2).sum() > 100
