"""The wall-clock budget stops training on time with the learning rate decayed, and 2-process gloo DDP runs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_time_budget_stops_on_time_with_lr_decayed(plan_dir, tmp_path):
    from seg3d.training import train

    budget_min = 0.1  # 6 s of training, epochs unlimited
    res = train(plan_dir, fold=0, model_dir=tmp_path / "m", iters_per_epoch=2, time_budget_min=budget_min,
                device="cpu", precision="fp32", workers=0, val_batches=1, validate=False, log=lambda s: None)
    rows = _rows(tmp_path / "m" / "fold_0" / "log.csv")
    assert len(rows) == res["epochs"] >= 2
    # stops within one epoch of the budget: never before it, never much after
    assert budget_min * 60 <= res["seconds"] or float(rows[-1]["lr"]) < 1e-3
    assert res["seconds"] < budget_min * 60 + 3 * max(float(r["epoch_time_s"]) for r in rows)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.35 * lrs[0]  # poly decay fitted to the budget
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed[-2] < budget_min * 60  # every epoch but the last started inside the budget

    # resuming a finished budget does not train further
    again = train(plan_dir, fold=0, model_dir=tmp_path / "m", iters_per_epoch=2, time_budget_min=budget_min,
                  device="cpu", precision="fp32", workers=0, val_batches=1, validate=False, resume=True,
                  log=lambda s: None)
    assert again["epochs"] == res["epochs"] and again["steps"] == res["steps"]


_DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from seg3d.training import train

    plan_dir, model_dir, compile_model = sys.argv[1], sys.argv[2], sys.argv[3] == "compile"
    lines = []
    res = train(plan_dir, fold=0, model_dir=model_dir, epochs=2, iters_per_epoch=2, device="cpu",
                precision="fp32", workers=0, val_batches=1, validate=False, log=lines.append,
                compile=compile_model)
    rank = int(os.environ["RANK"])
    # every rank's weights after training, to compare: DDP keeps the replicas identical
    w = torch.load(os.path.join(model_dir, "fold_0", "checkpoint_latest.pt"), weights_only=False)["model"] \\
        if rank == 0 else None
    with open(os.path.join(model_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"steps": res["steps"], "epochs": res["epochs"], "log": lines,
                   "threads": torch.get_num_threads()}, f)
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eager", "compile"])  # compile: torch.compile of the DDP-wrapped model
def test_two_process_gloo_ddp_trains_and_rank0_writes(plan_dir, tmp_path, mode):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    model_dir = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(plan_dir), str(model_dir), mode], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((model_dir / "rank0.json").read_text())
    r1 = json.loads((model_dir / "rank1.json").read_text())
    assert r0["steps"] == r1["steps"] == 4 and r0["epochs"] == r1["epochs"] == 2
    assert any("x2 ranks" in line for line in r0["log"]) and r1["log"] == []  # rank 0 speaks for everyone
    compiled = [line for line in r0["log"] if line.startswith("torch.compile: the first step")]
    assert len(compiled) == (mode == "compile") and not any("compile failed" in line for line in r0["log"])
    assert r0["threads"] == r1["threads"] >= 1  # the cores are shared between the ranks
    fdir = model_dir / "fold_0"
    ckpt = torch.load(fdir / "checkpoint_final.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and len(_rows(fdir / "log.csv")) == 2
    assert not list(fdir.glob("*.tmp*"))


def test_ranks_draw_different_patches(tiny_plan, phantom_dir, tmp_path):
    """Per-rank sampling: the same seed and epoch give each rank its own batches."""
    from seg3d.data import make_loader
    from seg3d.preprocessing.cache import CaseCache, build_cache

    build_cache(phantom_dir, tiny_plan, "3d_fullres", tmp_path / "cache", workers=0)
    cache = CaseCache(tmp_path / "cache")
    ids = sorted(cache.case_ids)
    batches = []
    for rank in (0, 1):
        loader = make_loader(cache, ids, tiny_plan, "3d_fullres", augment=None, seed=3, rank=rank, world_size=2)
        it = iter(loader.epoch(0))
        batches.append(next(it)["image"])
        getattr(it, "close", lambda: None)()
    assert not torch.equal(batches[0], batches[1])
