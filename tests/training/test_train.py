"""The trainer end to end on a tiny network and the phantom: overfitting, validation outputs, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interrupt import Interrupted, interrupt_at


def _two_case_splits(model_dir):
    model_dir.mkdir(parents=True, exist_ok=True)
    ids = ["phantom_000", "phantom_001"]
    (model_dir / "splits.json").write_text(json.dumps([{"train": ids, "val": ids}]))


@pytest.mark.slow
def test_tiny_network_learns_two_cases_and_fold_validation_is_written(plan_dir, tmp_path):
    from seg3d.training import train

    model_dir = tmp_path / "model"
    _two_case_splits(model_dir)
    # the short-run recipe (as the cpu preset's, at a higher lr): 300 iterations learn every class, the small
    # "satellite" included (nnU-Net's SGD recipe needs far longer for it)
    res = train(plan_dir, fold=0, model_dir=model_dir, epochs=20, iters_per_epoch=15, device="cpu",
                precision="fp32", workers=0, val_batches=1, log=lambda s: None, optimizer="adamw", lr=1e-2,
                augmentation="light")
    fdir = model_dir / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.csv", "progress.png"):
        assert (fdir / name).is_file(), name
    summary = json.loads((fdir / "validation" / "summary.json").read_text())
    assert sorted(p.name for p in (fdir / "validation").glob("*.nii.gz")) == ["phantom_000.nii.gz",
                                                                             "phantom_001.nii.gz"]
    assert res["epochs"] == 20
    with np.load(fdir / "validation" / "phantom_000.npz") as z:  # kept for scoring ensembles (seg3d summary)
        probs = z["probabilities"]
    assert probs.dtype == np.float16 and probs.shape[0] == 4 and np.allclose(probs.sum(0), 1, atol=0.02)
    assert all(d > 0.9 for d in summary["per_class"].values()), summary["per_class"]


@pytest.mark.slow
def test_resume_equals_uninterrupted(plan_dir, tmp_path):
    from seg3d.training import train

    kw = dict(fold=0, epochs=3, iters_per_epoch=3, device="cpu", precision="fp32", workers=0,
              val_batches=1, validate=False, log=lambda s: None)
    a, b = tmp_path / "a", tmp_path / "b"
    train(plan_dir, model_dir=a, **kw)

    # killed at the first iteration of epoch 1, after epoch 0's checkpoint
    with pytest.raises(Interrupted):
        train(plan_dir, model_dir=b, progress=interrupt_at(4), **kw)
    train(plan_dir, model_dir=b, resume=True, **kw)
    wa = torch.load(a / "fold_0" / "checkpoint_final.pt", weights_only=False)["model"]
    wb = torch.load(b / "fold_0" / "checkpoint_final.pt", weights_only=False)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
