"""The batch runner's guarantees, with a stand-in predictor so only the batch mechanics are under test:
--continue, a corrupt file in a batch, no partial output after an interrupted write, parts, the manifest."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from inference_helpers import write_case

from seg3d.errors import Seg3dError
from seg3d.inference.stages import list_input_cases, split_parts
from seg3d.io.image import Geometry, read_image
from seg3d.runners.local import predict_folder

GEO = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (5.0, -3.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


class ThresholdPredictor:
    """Labels = voxels brighter than the image mean; same interface as seg3d.inference.Predictor."""

    label_values = (0, 1)

    def __init__(self, channels: int = 1):
        self.plan = SimpleNamespace(num_channels=channels)
        self.calls: list[str] = []

    def preprocess(self, data, geometry, where=None):
        if data.shape[0] != self.plan.num_channels:
            raise Seg3dError("wrong channel count", where)
        return data, SimpleNamespace(geometry=geometry)

    def predict_preprocessed(self, pdata):
        return pdata[0] > pdata[0].mean()

    def export(self, probs, props, probabilities=False):
        self.calls.append("export")
        return probs.astype(np.uint8), (np.stack([~probs, probs]).astype(np.float32) if probabilities else None)

    def describe(self):
        return {"model": "threshold"}


def _folder(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "in"
    for i in range(n):
        write_case(d, f"case{i:02d}", GEO, seed=i)
    return d


def _run(in_dir, out_dir, **kw):
    return predict_folder(in_dir, out_dir, model_dir=None, predictor=kw.pop("predictor", ThresholdPredictor()),
                          **kw)


def test_outputs_manifest_and_probabilities(tmp_path):
    in_dir = _folder(tmp_path, 3)
    s = _run(in_dir, tmp_path / "out", save_probabilities=True)
    assert s["predicted"] == 3 and not s["failed"]
    for i in range(3):
        img = read_image(tmp_path / "out" / f"case{i:02d}.nii.gz")
        assert img.geometry == GEO and img.array.dtype == np.uint8
        src = read_image(in_dir / f"case{i:02d}_0000.nii.gz").array
        assert np.array_equal(img.array, (src > src.mean()).astype(np.uint8))
        npz = np.load(tmp_path / "out" / f"case{i:02d}.npz")
        assert npz["probabilities"].shape == (2, *GEO.shape) and list(npz["label_values"]) == [0, 1]
    m = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())
    assert {c["case"] for c in m["cases"]} == {"case00", "case01", "case02"}
    assert all(c["status"] == "ok" and c["seconds"]["network"] >= 0 for c in m["cases"])
    assert "torch" in m["versions"] and m["model"] == "threshold"


def test_continue_skips_complete_outputs_and_redoes_damaged_ones(tmp_path):
    in_dir = _folder(tmp_path, 4)
    out = tmp_path / "out"
    _run(in_dir, out)
    (out / "case01.nii.gz").unlink()
    (out / "case02.nii.gz").write_bytes(b"not an image")         # damaged: must be redone
    mtime = (out / "case00.nii.gz").stat().st_mtime_ns
    s = _run(in_dir, out, continue_=True)
    assert (s["predicted"], s["skipped"]) == (2, 2)
    assert (out / "case00.nii.gz").stat().st_mtime_ns == mtime
    assert read_image(out / "case02.nii.gz").geometry == GEO
    s = _run(in_dir, out, continue_=False)
    assert s["predicted"] == 4


def test_corrupt_file_is_reported_and_the_rest_completes(tmp_path):
    in_dir = _folder(tmp_path, 4)
    good = (in_dir / "case01_0000.nii.gz").read_bytes()
    (in_dir / "case01_0000.nii.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    (in_dir / "stray.nii.gz").write_bytes(good)                           # no channel suffix, 1-ch: fine
    (in_dir / "case09_0001.nii.gz").write_bytes(good)                     # channel 1 of a 1-channel model
    s = _run(in_dir, tmp_path / "out")
    assert s["predicted"] == 4   # case00, case02, case03, stray
    failed = {f["case"]: f for f in s["failed"]}
    assert set(failed) == {"case01", "case09"}
    assert "case01_0000.nii.gz" in failed["case01"]["path"]
    assert not (tmp_path / "out" / "case01.nii.gz").exists()
    m = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())
    assert len(m["failures"]) == 2


def _predict_broken_batch(tmp_path, model_dir, *options: str):
    """`seg3d predict` on a folder holding one unreadable file, output in tmp_path/out."""
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    in_dir = tmp_path / "in"
    in_dir.mkdir(exist_ok=True)
    (in_dir / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")
    return CliRunner().invoke(app, ["predict", "-i", str(in_dir), "-o", str(tmp_path / "out"), "-m",
                                    str(model_dir), "--device", "cpu", *options])


def test_cli_exit_code_and_summary_for_a_broken_batch(tmp_path, tiny_model_dir):
    res = _predict_broken_batch(tmp_path, tiny_model_dir, "--folds", "0")
    assert res.exit_code == 1, res.output
    assert "broken_0000.nii.gz" in res.output and "failed 1" in res.output


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import nibabel
    import SimpleITK as sitk

    in_dir = _folder(tmp_path, 2)

    def dying_write(img, path, *a, **kw):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process is killed mid-write

    for module, name in ((sitk, "WriteImage"), (nibabel, "save")):  # NIfTI masks go through nibabel
        with monkeypatch.context() as m:
            m.setattr(module, name, dying_write)
            if module is sitk:  # the SimpleITK path: a non-NIfTI reference
                m.setattr("seg3d.io.writers._write_nifti_like", _raise_fallback)
            with pytest.raises(KeyboardInterrupt):
                _run(in_dir, tmp_path / "out")
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name != "predict_manifest.json"]
    assert leftovers == []
    s = _run(in_dir, tmp_path / "out", continue_=True)
    assert s["predicted"] == 2


def _raise_fallback(*a, **kw):
    from seg3d.io.writers import _Fallback

    raise _Fallback


@pytest.mark.parametrize("n,parts", [(7, 3), (2, 4), (5, 1)])
def test_parts_are_disjoint_and_cover_everything(n, parts):
    ids = [f"c{i}" for i in range(n)][::-1]
    chunks = [split_parts(ids, parts, k) for k in range(parts)]
    flat = [c for ch in chunks for c in ch]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))
    with pytest.raises(Seg3dError):
        split_parts(ids, parts, parts)


def test_parts_on_a_folder(tmp_path):
    in_dir = _folder(tmp_path, 5)
    outs = []
    for k in range(2):
        s = _run(in_dir, tmp_path / "out", num_parts=2, part_id=k)
        outs.append(s["predicted"])
        assert (tmp_path / "out" / f"predict_manifest_part{k}of2.json").is_file()
    assert sum(outs) == 5
    assert len(list((tmp_path / "out").glob("case*.nii.gz"))) == 5


def test_multichannel_listing_requires_every_channel(tmp_path):
    d = tmp_path / "in"
    write_case(d, "a", GEO, channels=2)
    write_case(d, "b", GEO, channels=1)
    cases, problems = list_input_cases(d, 2)
    assert list(cases) == ["a"] and [p.name for p in cases["a"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert len(problems) == 1 and problems[0][0] == "b" and "'b'" in problems[0][2]


def test_cli_precision_is_checked_before_work_and_recorded(tmp_path, tiny_model_dir):
    bad = _predict_broken_batch(tmp_path, tiny_model_dir, "--precision", "fp8")
    assert bad.exit_code != 0 and "precision must be one of" in bad.output
    assert not (tmp_path / "out").exists()
    ok = _predict_broken_batch(tmp_path, tiny_model_dir, "--precision", "fp32")
    assert ok.exit_code == 1  # the broken file, nothing else
    assert json.loads((tmp_path / "out" / "predict_manifest.json").read_text())["precision"] == "fp32"


def test_precision_warning_names_emulated_bf16_only_where_it_is_emulated():
    import torch

    from seg3d.core.device import cpu_has_fast_bf16, precision_warning

    cpu = torch.device("cpu")
    assert precision_warning("fp32", cpu) is None and precision_warning("auto", cpu) is None
    assert (precision_warning("bf16", cpu) is None) == cpu_has_fast_bf16()
    assert "fp16" in precision_warning("fp16", cpu)
