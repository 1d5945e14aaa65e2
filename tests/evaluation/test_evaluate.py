"""evaluate_folder and `seg3d evaluate`: files well-formed, pictures valid, geometry mismatch named, exit codes."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from seg3d.errors import Seg3dError
from seg3d.evaluation import case_metrics, evaluate_folder
from seg3d.evaluation.figures import DPI, MONTAGE_SIZE_IN
from seg3d.evaluation.report import CSV_COLUMNS
from seg3d.io.image import Geometry, write_image

SHAPE = (8, 20, 24)
GEO = Geometry(size=(24, 20, 8), spacing=(0.9, 0.8, 2.5), origin=(10.0, -5.0, 3.0),
               direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))


def _ref(k: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 4 + k:12 + k, 5:14] = 1
    lab[3:5, 12 + k:16, 14:20] = 2
    return lab


@pytest.fixture
def folders(tmp_path):
    """Three references, two predictions (case_c missing), images, an MSD-style dataset.json."""
    gt, pred, img = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    for k, cid in enumerate(("case_a", "case_b", "case_c")):
        ref = _ref(k)
        write_image(ref, GEO, gt / f"{cid}.nii.gz")
        write_image(ref.astype(np.float32) * 50 + np.float32(k), GEO, img / f"{cid}_0000.nii.gz")
        if cid != "case_c":
            p = np.roll(ref, k, axis=2)
            if k == 1:
                p[p == 2] = 0  # class 2 missed entirely
            write_image(p, GEO, pred / f"{cid}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "t", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "training": []}))
    return gt, pred, img, tmp_path / "dataset.json"


def test_reports_are_well_formed(folders, tmp_path):
    from PIL import Image

    gt, pred, img, dj = folders
    seen = []
    res = evaluate_folder(pred, gt, tmp_path / "report", dataset_json=dj, images_dir=img, tolerance_mm=2.0,
                          pictures=-1, workers=0, progress=lambda d, t, m: seen.append((d, t)))
    out = tmp_path / "report"
    assert seen[-1] == (2, 2)
    assert res["missing_predictions"] == ["case_c"]
    assert list(res["per_class"]) == ["liver", "tumour"]
    # CSV: one row per case and class, values consistent with case_metrics on the arrays
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2 * 2
    direct = case_metrics(np.roll(_ref(1), 1, axis=2) * (np.roll(_ref(1), 1, axis=2) != 2), _ref(1),
                          GEO.spacing_zyx, [1, 2], tolerance_mm=2.0)
    row = {(r["case_id"], r["class"]): r for r in rows}
    assert float(row[("case_b", "liver")]["dice"]) == pytest.approx(direct[1].dice)
    assert float(row[("case_b", "liver")]["hd95_mm"]) == pytest.approx(direct[1].hd95_mm)
    assert row[("case_b", "tumour")]["status"] == "pred_empty" and row[("case_b", "tumour")]["hd95_mm"] == "NaN"
    assert float(row[("case_a", "liver")]["dice"]) == 1.0
    # JSON: strict JSON (no NaN), the keys a reader needs
    data = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    for key in ("per_class", "foreground_mean", "cases", "conventions", "labels", "tolerance_mm",
                "missing_predictions", "pictures"):
        assert key in data
    t = data["per_class"]["tumour"]
    assert t["n_pred_empty"] == 1 and t["hd95_n"] == 1 and t["dice_n"] == 2 and t["dice_median"] == t["dice_mean"]
    assert data["foreground_mean"]["dice"] == pytest.approx(
        (data["per_class"]["liver"]["dice_mean"] + t["dice_mean"]) / 2)
    # Markdown: tables, conventions, links that resolve to real PNG files of the expected size
    md = (out / "report.md").read_text()
    assert "## Conventions" in md and "case_c" in md and "| liver | 1 |" in md
    w, h = int(MONTAGE_SIZE_IN[0] * DPI), int(MONTAGE_SIZE_IN[1] * DPI)
    assert set(data["pictures"]["cases"]) == {"case_a", "case_b"}
    for rel in data["pictures"]["cases"].values():
        assert f"({rel})" in md
        with Image.open(out / rel) as im:
            assert im.format == "PNG" and im.size == (w, h)
    with Image.open(out / data["pictures"]["boxplot"]) as im:
        assert im.format == "PNG" and im.size == (600, 450)


def test_labels_inferred_without_dataset_json_and_no_pictures(folders, tmp_path):
    gt, pred, _, dj = folders
    dj.unlink()  # otherwise GT_DIR/../dataset.json is found and used
    res = evaluate_folder(pred, gt, tmp_path / "r2", pictures=0, workers=0)
    assert list(res["per_class"]) == ["label_1", "label_2"]
    assert res["labels_source"] == "label values found in the data"
    assert not (tmp_path / "r2" / "pictures").exists()
    assert math.isclose(res["per_class"]["label_1"]["dice_mean"],
                        json.loads((tmp_path / "r2" / "metrics.json").read_text())["per_class"]["label_1"]["dice_mean"])


def test_report_links_the_models_training_curves(folders, tmp_path):
    gt, pred, _, _ = folders
    model = tmp_path / "model"
    for fold in ("0", "1"):
        (model / f"fold_{fold}").mkdir(parents=True)
        (model / f"fold_{fold}" / "progress.png").write_bytes(b"png")
    out = tmp_path / "r3"
    res = evaluate_folder(pred, gt, out, pictures=0, workers=0, model_dir=model)
    assert res["pictures"]["training"] == {"0": "../model/fold_0/progress.png", "1": "../model/fold_1/progress.png"}
    md = (out / "report.md").read_text()
    assert "## Training curves" in md and "![fold 1](../model/fold_1/progress.png)" in md
    for rel in res["pictures"]["training"].values():
        assert (out / rel).is_file()  # the link resolves from the report's folder
    with pytest.raises(Seg3dError, match="model folder not found") as e:
        evaluate_folder(pred, gt, tmp_path / "r5", pictures=0, workers=0, model_dir=tmp_path / "typo")
    assert "typo" in str(e.value)
    plain = evaluate_folder(pred, gt, tmp_path / "r4", pictures=0, workers=0)
    assert plain["pictures"]["training"] == {} and "Training curves" not in (tmp_path / "r4" / "report.md").read_text()


@pytest.mark.parametrize("bad", ["origin", "size"])
def test_geometry_mismatch_names_the_case(folders, tmp_path, bad):
    gt, pred, _, _ = folders
    if bad == "origin":
        geo = Geometry(GEO.size, GEO.spacing, (12.0, -5.0, 3.0), GEO.direction)
        write_image(_ref(1), geo, pred / "case_b.nii.gz")
    else:
        geo = Geometry((24, 20, 9), GEO.spacing, GEO.origin, GEO.direction)
        write_image(np.zeros((9, 20, 24), np.uint8), geo, pred / "case_b.nii.gz")
    with pytest.raises(Seg3dError, match=f"case 'case_b'.*{bad}"):
        evaluate_folder(pred, gt, tmp_path / "r3", workers=0)
    assert not (tmp_path / "r3" / "metrics.json").exists()


def test_no_matching_prediction_is_an_error(folders, tmp_path):
    gt, _, _, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Seg3dError, match="no prediction matches"):
        evaluate_folder(empty, gt, tmp_path / "r4", workers=0)


def test_cli_exit_codes(folders, tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    gt, pred, img, dj = folders
    write_image(_ref(2), GEO, pred / "case_c.nii.gz")  # three pairs: runs in a process pool
    runner = CliRunner()
    ok = runner.invoke(app, ["evaluate", str(pred), str(gt), "-o", str(tmp_path / "cli"), "--dataset-json", str(dj),
                             "--pictures", "1", "--workers", "2", "--images-dir", str(img)])
    assert ok.exit_code == 0, ok.output
    assert "report.md" in ok.output and "liver" in ok.output
    assert (tmp_path / "cli" / "metrics.csv").is_file()
    assert len(list((tmp_path / "cli" / "pictures").glob("case_*.png"))) == 1
    usage = runner.invoke(app, ["evaluate", str(pred), str(gt)])  # -o missing
    assert usage.exit_code == 2
    write_image(_ref(0), Geometry(GEO.size, (1.0, 0.8, 2.5), GEO.origin, GEO.direction), pred / "case_a.nii.gz")
    bad = runner.invoke(app, ["evaluate", str(pred), str(gt), "-o", str(tmp_path / "cli2")])
    assert bad.exit_code == 1
    assert "case_a" in bad.output and "spacing" in bad.output and "Traceback" not in bad.output
