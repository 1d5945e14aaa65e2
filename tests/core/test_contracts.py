"""The contracts layer: fold parser, settings validation, the model folder and the plan folder."""
from __future__ import annotations

import json

import pytest
import torch

from seg3d.core.folds import parse_folds
from seg3d.core.model_folder import ModelFolder, ModelInfo
from seg3d.core.plan import Plan, TrainingDefaults
from seg3d.core.plan_folder import PlanFolder
from seg3d.core.settings import PredictSettings, TrainSettings
from seg3d.errors import Seg3dError


@pytest.mark.parametrize("given,want", [(None, "all-available"), ([], "all-available"), ("all_available", "all-available"),
                                        ("0,1,2", ["0", "1", "2"]), (["0", "1"], ["0", "1"]), ([0, 2], ["0", "2"]),
                                        ("0 1 1", ["0", "1"]), (3, ["3"]), ("all", ["all"]), (["02"], ["2"])])
def test_one_fold_parser_for_train_and_predict(given, want):
    assert parse_folds(given) == want


def test_fold_parser_names_the_bad_value():
    with pytest.raises(Seg3dError, match="'x'"):
        parse_folds("0,x")


def test_settings_validate_before_any_work():
    assert TrainSettings(fold=1).fold == "1" and TrainSettings().total_epochs == 1000
    assert TrainSettings(time_budget_min=2).iterations == 50 and TrainSettings(time_budget_min=2).budget_s == 120
    for kw, msg in (({"precision": "int8"}, "precision must be one of"), ({"fold": "0,1"}, "one fold"),
                    ({"time_budget_min": 0}, "time-budget"), ({"epochs": 0}, ">= 1"), ({"lr": -1.0}, "learning rate")):
        with pytest.raises(Seg3dError, match=msg):
            TrainSettings(**kw)
    s = PredictSettings(folds=[0, 1], step=1)
    assert s.folds == ("0", "1") and s.step == 1.0 and PredictSettings().folds == "all-available"
    for kw, msg in (({"step": 0}, "step"), ({"checkpoint": "last"}, "checkpoint must be one of"),
                    ({"num_parts": 2, "part_id": 2}, "part-id"), ({"config": "4d"}, "configuration")):
        with pytest.raises(Seg3dError, match=msg):
            PredictSettings(**kw)
    with pytest.raises(Seg3dError, match="step"):
        s.with_(step=2.0)  # copies are validated too


def test_model_folder_owns_names_checkpoints_and_checksums(tmp_path, tiny_plan):
    folder = ModelFolder(tmp_path / "m")
    with pytest.raises(Seg3dError, match="model folder not found"):
        folder.require()
    folder.path.mkdir()
    folder.save_plan(tiny_plan)
    folder.save_info(ModelInfo(arch="unetpp", dataset_dir="/data/x"))
    assert folder.load_plan() == tiny_plan and folder.load_info().arch == "unetpp"
    assert folder.dataset_dir().as_posix() == "/data/x"
    for fold in ("1", "0", "all"):
        folder.fold_dir(fold).mkdir()
        torch.save({"model": {"w": torch.full((2,), float(len(fold)))}}, folder.checkpoint_path(fold))
    assert folder.available_folds() == ["0", "1", "all"] and folder.available_folds("best") == []
    assert folder.load_checkpoint("0")["model"]["w"].tolist() == [1.0, 1.0]
    a, b = folder.weights_checksum(["0", "1"]), folder.weights_checksum(["1", "0"])
    assert len(a) == 64 and a != b and a == folder.weights_checksum(["0", "1"])
    with pytest.raises(Seg3dError, match="checkpoint must be one of"):
        folder.checkpoint_path(0, "last")
    with pytest.raises(Seg3dError, match="no checkpoint_final"):
        folder.weights_checksum(["4"])
    assert folder.load_postprocessing_dict() is None
    folder.postprocessing_json.write_text("{broken")
    with pytest.raises(Seg3dError, match="malformed post-processing"):
        folder.load_postprocessing_dict()
    folder.postprocessing_json.write_text(json.dumps({"classes": [1]}))
    assert folder.load_postprocessing_dict() == {"classes": [1]}
    folder.validation_dir(0).mkdir()
    folder.validation_summary(0).write_text(json.dumps({"n_cases": 3}))
    assert folder.load_validation_summary(0) == {"n_cases": 3} and folder.load_validation_summary(1) is None


def test_a_model_folder_from_before_model_json_recorded_the_dataset(tmp_path, tiny_plan):
    folder = ModelFolder(tmp_path)
    d = tiny_plan.to_dict()
    del d["training"]  # a plan written before the typed field
    d["extra"] = {"dataset_dir": "/old/place", "training": {"optimizer": "adamw"}}
    folder.plans_json.write_text(json.dumps(d))
    assert folder.dataset_dir().as_posix() == "/old/place"  # no model.json at all
    folder.save_info(ModelInfo())
    assert folder.load_info().dataset_dir == "/old/place"
    assert folder.load_plan().training == TrainingDefaults(optimizer="adamw")  # old extra["training"] is read


def test_plan_has_typed_training_defaults_and_no_path(tiny_plan, tmp_path, phantom_dir):
    d = tiny_plan.to_dict()
    assert "extra" not in d and d["training"] == {"optimizer": None, "lr": None, "augmentation": None}
    assert Plan.from_dict(d) == tiny_plan
    with pytest.raises(Seg3dError, match="unknown training defaults"):
        TrainingDefaults.from_dict({"momentum": 0.9})
    folder = PlanFolder(tmp_path)
    tiny_plan.save(folder.plans_json)
    with pytest.raises(Seg3dError, match="pass it with --dataset"):
        folder.dataset_dir()
    folder.record_dataset(phantom_dir)
    assert folder.dataset_dir() == phantom_dir.resolve()
    assert str(phantom_dir.resolve()) not in folder.plans_json.read_text()  # the plan itself stays portable
    with pytest.raises(Seg3dError, match="not a dataset folder"):
        PlanFolder(tmp_path / "elsewhere").dataset_dir(tmp_path)
