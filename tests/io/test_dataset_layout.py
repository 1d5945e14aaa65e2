"""dataset.json mistakes become problems naming dataset.json (never a traceback from deep inside)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from seg3d.io.checks import check_dataset

MSD = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}}


@pytest.mark.parametrize("meta, words", [
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": "abc"}, ["numTraining", "abc"]),
    ({**MSD, "training": [{"image": 5}], "numTraining": 1}, ["training[0]", "image"]),
    ({**MSD, "training": [{"image": "./imagesTr/a.nii.gz", "label": 7}]}, ["training[0]", "label"]),
    ({**MSD, "training": [], "test": "imagesTs/x.nii.gz"}, ["'test'", "list"]),
    ({**MSD, "training": [{"image": "./imagesTr/a.nii.gz"}]}, ["no label"]),
    ({"modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": "all"}, ["'training'"]),
    ({"channel_names": {"0": "CT", "2": "PET"}, "labels": {"background": 0}}, ["without gaps"]),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 1}}, ["declared twice"]),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": -2}}, ["negative"]),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".png"}, ["file_ending"]),
])
def test_dataset_json_mistakes_are_reported(tmp_path, meta, words):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    problems = check_dataset(tmp_path, workers=0)
    text = [str(p) for p in problems]
    assert any(all(w in t for w in words) for t in text), text
    assert any(p.path is not None and Path(p.path).name in ("dataset.json", "a.nii.gz") for p in problems)
