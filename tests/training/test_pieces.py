"""Splits, schedule, checkpoint atomicity and logs: the trainer's pieces on their own (fast)."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from seg3d.errors import Seg3dError
from seg3d.training.checkpoint import load_training_checkpoint, rng_states, save_checkpoint, set_rng_states
from seg3d.training.logs import plot_progress, write_csv
from seg3d.training.schedule import Schedule
from seg3d.training.splits import fold_cases, load_or_create_splits, make_splits


def test_splits_partition_and_are_deterministic(tmp_path):
    ids = [f"case_{i:03d}" for i in range(23)]
    s1, s2 = make_splits(ids), make_splits(list(reversed(ids)))
    assert s1 == s2 and len(s1) == 5
    vals = [c for s in s1 for c in s["val"]]
    assert sorted(vals) == ids  # every case validated exactly once
    for s in s1:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 23
    saved = load_or_create_splits(tmp_path, ids)
    assert json.loads((tmp_path / "splits.json").read_text()) == saved == s1
    assert fold_cases(saved, "all", ids) == (ids, [])
    with pytest.raises(Seg3dError, match="fold 7"):
        fold_cases(saved, 7, ids)


def test_user_splits_are_respected_and_checked(tmp_path):
    ids = ["a", "b", "c", "d"]
    mine = [{"train": ["a", "b", "c"], "val": ["d"]}]
    (tmp_path / "splits.json").write_text(json.dumps(mine))
    assert load_or_create_splits(tmp_path, ids) == mine
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["a", "zz"], "val": ["d"]}]))
    with pytest.raises(Seg3dError, match="zz"):
        load_or_create_splits(tmp_path, ids)


def test_poly_schedule_by_epochs_and_by_time_budget():
    s = Schedule(base_lr=0.01, epochs=10)
    assert s.lr(s.fraction(0, 0, 50, 0.0)) == pytest.approx(0.01)
    assert s.lr(s.fraction(5, 0, 50, 1e6)) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert s.done(10, 0.0) and not s.done(9, 0.0)
    t = Schedule(base_lr=0.01, budget_s=600.0)  # the time fraction drives the decay: lr -> 0 at the budget
    assert t.lr(t.fraction(3, 7, 50, 300.0)) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert t.lr(t.fraction(99, 0, 50, 600.0)) == 0.0
    assert t.done(1, 600.0) and not t.done(10**6, 599.0)
    w = Schedule(base_lr=1e-3, kind="warmup_poly", warmup=0.1, epochs=100)
    assert w.lr(0.0) < w.lr(0.05) < w.lr(0.1) == pytest.approx(1e-3 * 0.9 ** 0.9)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def boom(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    ck = load_training_checkpoint(path)
    assert ck["epoch"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pt"]  # no temporary left behind
    path.write_bytes(b"garbage")
    with pytest.raises(Seg3dError, match="cannot read checkpoint"):
        load_training_checkpoint(path)


def test_rng_states_round_trip():
    import random

    import numpy as np

    st = rng_states()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_states(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_log_csv_and_progress_png(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": float("nan") if e == 0 else 0.5,
             "pseudo_dice_mean": 0.1 * e, "ema_pseudo_dice": 0.05 * e, "lr": 0.01 * (1 - e / 4), "epoch_time_s": 2.0,
             "elapsed_s": 2.0 * (e + 1), "data_wait_share": 0.1, "iterations": 5, "dice_core": 0.2 * e}
            for e in range(3)]
    write_csv(rows, tmp_path / "log.csv")
    plot_progress(rows, tmp_path / "progress.png")
    with open(tmp_path / "log.csv") as f:
        got = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in got] == [0, 1, 2] and got[0]["val_loss"] == "nan"
    assert float(got[2]["dice_core"]) == pytest.approx(0.4)
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
