"""Splits, schedule, checkpoint atomicity and logs: the trainer's pieces on their own (fast)."""
from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch

from seg3d.core.model_folder import load_checkpoint_file as load_checkpoint
from seg3d.errors import Seg3dError
from seg3d.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from seg3d.training.logging import EpochLog
from seg3d.training.schedule import default_schedule, training_fraction
from seg3d.training.splits import fold_cases, load_or_create_splits, make_splits


def test_splits_partition_and_are_deterministic(tmp_path):
    ids = [f"case_{i:03d}" for i in range(23)]
    s1, s2 = make_splits(ids), make_splits(list(reversed(ids)))
    assert s1 == s2 and len(s1) == 5
    vals = [c for s in s1 for c in s["val"]]
    assert sorted(vals) == ids  # every case validated exactly once
    for s in s1:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 23
    saved = load_or_create_splits(tmp_path / "splits.json", ids)
    assert json.loads((tmp_path / "splits.json").read_text()) == saved == s1
    assert fold_cases(saved, "all", ids) == (ids, [])
    with pytest.raises(Seg3dError, match="fold 7"):
        fold_cases(saved, 7, ids)


def test_user_splits_are_respected_and_checked(tmp_path):
    ids = ["a", "b", "c", "d"]
    mine = [{"train": ["a", "b", "c"], "val": ["d"]}]
    (tmp_path / "splits.json").write_text(json.dumps(mine))
    assert load_or_create_splits(tmp_path / "splits.json", ids) == mine
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["a", "zz"], "val": ["d"]}]))
    with pytest.raises(Seg3dError, match="zz"):
        load_or_create_splits(tmp_path / "splits.json", ids)


def test_poly_schedule_by_steps_and_by_time_budget():
    s = default_schedule("sgd")
    assert s.lr(training_fraction(0, 500, 0.0, None)) == pytest.approx(0.01)
    assert s.lr(training_fraction(250, 500, 1e6, None)) == pytest.approx(0.01 * 0.5 ** 0.9)
    # under a budget the time fraction drives the decay: lr -> 0 at the budget whatever the step count
    assert s.lr(training_fraction(3, 10**9, 300.0, 600.0)) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert training_fraction(3, 10**9, 600.0, 600.0) == 1.0 and s.lr(1.0) == 0.0
    w = default_schedule("adamw")
    assert w.lr(0.0) < w.lr(0.03) < w.lr(0.05) == pytest.approx(1e-3 * 0.95 ** 0.9)
    with pytest.raises(Seg3dError, match="optimizer"):
        default_schedule("lbfgs")


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def boom(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]  # no temporary left behind
    path.write_bytes(b"garbage")
    with pytest.raises(Seg3dError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_rng_states_round_trip():
    import random

    import numpy as np

    st = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_log_csv_and_progress_png(tmp_path):
    log = EpochLog(tmp_path / "log.csv", tmp_path / "progress.png")
    for e in range(3):
        log.append({"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 0.5, "dice_core": 0.2 * e,
                    "ema_dice": 0.05 * e, "lr": 0.01 * (1 - e / 4), "epoch_time_s": 2.0, "data_wait": 0.1})
    log.plot()
    with open(tmp_path / "log.csv") as f:
        got = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in got] == [0, 1, 2]
    assert float(got[2]["dice_core"]) == pytest.approx(0.4)
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resumed = EpochLog(tmp_path / "log.csv", tmp_path / "progress.png", resume_epochs=2)  # a resume at epoch 2 drops later rows
    assert [int(r["epoch"]) for r in resumed.rows] == [0, 1]


def test_training_defaults_come_from_the_plan_and_the_command_line_wins(tiny_plan):
    from dataclasses import replace

    from seg3d.core.plan import TrainingDefaults
    from seg3d.training.trainer import training_defaults

    assert training_defaults(tiny_plan, None, None, None) == ("sgd", None, "default")  # nnU-Net's
    cpu_like = replace(tiny_plan, training=TrainingDefaults("adamw", 0.003, "light"))
    assert training_defaults(cpu_like, None, None, None) == ("adamw", 0.003, "light")
    assert training_defaults(cpu_like, "sgd", 0.02, "none") == ("sgd", 0.02, "none")
    assert default_schedule("adamw", 0.003).base_lr == 0.003 and default_schedule("sgd").base_lr == 0.01
    with pytest.raises(Seg3dError, match="learning rate"):
        default_schedule("sgd", -1.0)


def test_augmentation_presets():
    from seg3d.data import augment_batch, augmentation_preset

    assert augmentation_preset("none") is None
    with pytest.raises(Seg3dError, match="unknown augmentation 'heavy'"):
        augmentation_preset("heavy")
    light = augmentation_preset("light")
    # light = no resampling: the label patch is the exact crop, possibly mirrored, never interpolated
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (4, 1, 12, 12, 12), generator=g)
    image = torch.randn(4, 1, 12, 12, 12, generator=g)
    flips = [tuple(d + 1 for d in c) for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    img, lab = augment_batch(image, label, (12, 12, 12), light, np.random.default_rng(0), mirror_axes=(0, 1, 2))
    for b in range(4):
        assert any(torch.equal(lab[b], label[b].flip(dims)) for dims in flips)


def test_bad_training_options_fail_before_any_work(tiny_plan, tmp_path):
    from seg3d.training import train

    tiny_plan.save(tmp_path / "plans.json")  # no dataset recorded: any real work would fail differently
    for kw, msg in (({"augmentation": "heavy"}, "unknown augmentation"), ({"optimizer": "adam"}, "unknown optimizer"),
                    ({"lr": 0.0}, "learning rate"), ({"precision": "int8"}, "precision must be one of")):
        with pytest.raises(Seg3dError, match=msg):
            train(tmp_path, device="cpu", log=lambda s: None, **kw)
