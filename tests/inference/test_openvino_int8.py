"""int8 through OpenVINO: NNCF quantization calibrated on the fold's training cases, its cache, its errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import make_model_dir

from seg3d.errors import Seg3dError

pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")
pytest.importorskip("nncf", reason="nncf (in the openvino extra) is not installed (make test installs it)")
from seg3d.inference.backends import openvino_int8 as q8
from seg3d.inference.predictor import Predictor


def _model_with_dataset(root: Path, plan, dataset: Path, recorded: Path | None = None) -> Path:
    """A one-fold model folder whose fold 0 trained on 6 cases of ``dataset``; model.json records ``recorded``
    (default: ``dataset``) as the training dataset."""
    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.io.layout import load_dataset

    model = make_model_dir(root, plan, folds=(0,))
    ModelFolder(model).save_info(ModelInfo(config="3d_fullres", dataset_dir=str(recorded or dataset)))
    ids = sorted(c.case_id for c in load_dataset(dataset).cases)
    (model / "splits.json").write_text(json.dumps([{"train": ids[:6], "val": ids[6:]}]))
    return model


@pytest.fixture
def int8_model(tmp_path, tiny_plan, phantom_dir):
    dataset = tmp_path / "dataset"
    shutil.copytree(phantom_dir, dataset)
    return _model_with_dataset(tmp_path / "model", tiny_plan, dataset), dataset


def test_calibration_windows_are_the_sliding_windows_of_training_cases(int8_model):
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.predictor import load_model
    from seg3d.inference.sliding_window import window_items
    from seg3d.io.layout import load_dataset, read_case_images
    from seg3d.preprocessing import preprocess_case

    model_dir, dataset = int8_model
    model = load_model(model_dir, PredictSettings(folds=["0"]))
    cases = q8.dataset_cases(model, model.folder.training_cases("0"))
    assert [c.case_id for c in cases] == sorted(c.case_id for c in load_dataset(dataset).cases)[:6]
    patch = model.config.patch_size
    pdata, _, _ = preprocess_case(*read_case_images(cases[0], 1), model.plan, model.config)
    assert all(s >= p for s, p in zip(pdata.shape[1:], patch))  # no padding: windows are plain crops
    items = window_items(pdata.shape[1:], patch, 0.5, model.config.mirror_axes)

    windows = q8.calibration_windows(model, cases[:1], q8.Calibration(cases=1, windows=10 ** 6))
    # every window the sliding window feeds the network (each start under all 8 mirrorings), in its order
    assert len(windows) == len(items) and len(items) % 8 == 0
    for w, (start, flips) in zip(windows, items):
        crop = pdata[(slice(None), *(slice(a, a + p) for a, p in zip(start, patch)))]
        assert w.shape == (1, 1, *patch) and w.dtype == np.float32
        np.testing.assert_array_equal(w[0], np.flip(crop, [a + 1 for a in flips]) if flips else crop)
    few = q8.calibration_windows(model, cases[:1], q8.Calibration(cases=1, windows=5))
    again = q8.calibration_windows(model, cases[:1], q8.Calibration(cases=1, windows=5))
    assert len(few) == 5 and all(np.array_equal(a, b) for a, b in zip(few, again))  # a seeded sample
    assert all(any(np.array_equal(f, w) for w in windows) for f in few)


@pytest.mark.slow  # NNCF's calibration pass: ~15 s on a quiet 2-core machine, 53 s under load
def test_int8_predicts_close_to_fp32_and_is_cached(int8_model, monkeypatch):
    model_dir, dataset = int8_model
    settings = {"folds": ["0"], "backend": "openvino", "postprocess": False, "tta": False}
    fp32 = Predictor(model_dir, precision="fp32", **settings)
    int8 = Predictor(model_dir, precision="int8", **settings)
    entries = list((model_dir / "openvino_cache").glob("*/int8-*/network.xml"))
    assert len(entries) == 1
    xml = entries[0].read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml  # the network really is quantized
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, *fp32.config.patch_size)).astype(np.float32))
    a, b = fp32.networks[0](x), int8.networks[0](x)
    assert a.shape == b.shape
    assert float((a - b).abs().mean()) < 0.1 * float(a.abs().mean())  # int8 outputs (probabilities: softmax in the network) track fp32's
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) > 0.9

    # cached: found again without NNCF, without the dataset, without quantizing
    shutil.rmtree(dataset)
    monkeypatch.setattr(q8, "nncf_available", lambda: False)
    monkeypatch.setattr(q8, "quantize", lambda *a, **k: pytest.fail("a cached int8 network was quantized again"))
    again = Predictor(model_dir, precision="int8", **settings)
    assert torch.equal(again.networks[0](x), b)


def test_int8_needs_nncf_and_the_training_dataset(tmp_path, tiny_plan, phantom_dir, monkeypatch):
    model_dir = _model_with_dataset(tmp_path / "model", tiny_plan, phantom_dir, recorded=tmp_path / "gone")
    with pytest.raises(Seg3dError, match=r"training dataset recorded in model.json .*gone.* is not there"):
        Predictor(model_dir, folds=["0"], backend="openvino", precision="int8")
    monkeypatch.setattr(q8, "nncf_available", lambda: False)
    with pytest.raises(Seg3dError, match=r"NNCF, which is not installed: pip install 'seg3d\[openvino\]'"):
        Predictor(model_dir, folds=["0"], backend="openvino", precision="int8")


def test_int8_is_openvino_only(tmp_path, tiny_plan):
    from seg3d.core.settings import PredictSettings, TrainSettings

    model_dir = make_model_dir(tmp_path / "model", tiny_plan)
    with pytest.raises(Seg3dError, match="int8 runs an NNCF-quantized network through OpenVINO"):
        Predictor(model_dir, backend="torch", precision="int8", device="cpu")
    assert PredictSettings(precision="int8").precision == "int8"
    with pytest.raises(Seg3dError, match="precision must be one of"):
        TrainSettings(precision="int8")
