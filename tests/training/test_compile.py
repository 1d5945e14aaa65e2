"""`train(..., compile=True)`: the compiled forward trains, checkpoints stay plain, failures fall back."""
from __future__ import annotations

import pytest
import torch


def _train(plan_dir, out, logs, **kw):
    from seg3d.training import train

    return train(plan_dir, fold=0, model_dir=out, epochs=1, iters_per_epoch=2, device="cpu", precision="fp32",
                 workers=0, val_batches=1, validate=False, log=logs.append, compile=True, **kw)


@pytest.mark.slow
def test_compiled_training_runs_and_saves_plain_weights(plan_dir, tmp_path):
    from seg3d.core.model_folder import load_checkpoint_file as load_checkpoint

    logs: list[str] = []
    res = _train(plan_dir, tmp_path / "m", logs)
    assert res["steps"] == 2
    assert any(s.startswith("torch.compile: the first step") for s in logs), logs
    assert not any("torch.compile failed" in s for s in logs)
    keys = load_checkpoint(tmp_path / "m" / "fold_0" / "checkpoint_final.pt")["model"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)  # loads into an uncompiled network


def test_a_compile_failure_warns_and_trains_without_it(plan_dir, tmp_path, monkeypatch):
    def broken_compile(model, *a, **k):
        def call(x):
            raise RuntimeError("no C++ compiler\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    logs: list[str] = []
    res = _train(plan_dir, tmp_path / "m", logs)
    assert res["steps"] == 2
    warned = [s for s in logs if "torch.compile failed" in s]
    assert len(warned) == 1 and "RuntimeError: no C++ compiler" in warned[0] and "second line" not in warned[0]
