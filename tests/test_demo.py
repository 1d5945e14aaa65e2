"""The demo's steps, end to end, on a tiny phantom: what `make demo` does, within the test budget."""
from __future__ import annotations

import json

import numpy as np
import pytest

from seg3d.io.image import read_image


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_phantom(tmp_path):
    from seg3d.demo import run_demo

    messages: list[str] = []
    res = run_demo(tmp_path / "demo", minutes=0.4, num_phantoms=6, num_test=2, phantom_shape=(12, 40, 40),
                   workers=1, log=messages.append, device="cpu")
    # every stage left its artefacts where the demo says
    assert (res.plan_dir / "plans.json").is_file()
    assert (res.model_dir / "fold_all" / "checkpoint_final.pt").is_file()
    assert res.held_out_cases and len(res.held_out_cases) == 2
    for cid in res.held_out_cases:
        pred = read_image(res.predictions_dir / f"{cid}.nii.gz")
        ref = read_image(res.dataset_dir / "labelsTs" / f"{cid}.nii.gz")
        assert pred.geometry.size == ref.geometry.size  # the input's header, to float32 precision
        for a, b in ((pred.geometry.spacing, ref.geometry.spacing), (pred.geometry.origin, ref.geometry.origin),
                     (pred.geometry.direction, ref.geometry.direction)):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert set(np.unique(pred.array)) <= {0, 1, 2, 3}
    summary = json.loads((res.report_dir / "metrics.json").read_text())
    assert summary and res.evaluation.get("foreground_mean")  # the evaluation wrote its numbers
    assert set(res.timings_s) >= {"plan", "train", "predict", "evaluate"}
    assert any("training" in m for m in messages)
    assert "## Training curves" in (res.report_dir / "report.md").read_text()  # links fold_all/progress.png

    # the same output folder, now on a real-style dataset without a test set (fold 0, its validation cases are
    # the held-out ones): works beside the phantom run instead of tripping over its plan, splits and model
    from seg3d.synthetic import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "Dataset777_Other", num_cases=6, num_test=0, seed=5,
                                shape=(12, 40, 40))
    other = run_demo(tmp_path / "demo", data=data, minutes=0.15, workers=1, device="cpu")
    assert other.model_dir == tmp_path / "demo" / "Dataset777_Other" / "model"
    assert (other.model_dir / "fold_0" / "checkpoint_final.pt").is_file()
    val = json.loads((other.model_dir / "splits.json").read_text())[0]["val"]
    assert sorted(other.held_out_cases) == sorted(val) and (res.model_dir / "fold_all").is_dir()
