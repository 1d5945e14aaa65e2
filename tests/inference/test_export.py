"""`seg3d export` bundles: they predict what the model folder predicts, from a fresh folder, without checkpoints
or training code; a damaged bundle, a wrong backend and a missing runtime are clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from inference_helpers import make_model_dir, random_geometry, write_case

from seg3d.errors import Seg3dError

pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")


@pytest.fixture(scope="module")
def model_and_bundle(tmp_path_factory):
    """A 2-fold random model, its OpenVINO bundle moved to a fresh folder, and an input case."""
    from seg3d.export import export_bundle

    root = tmp_path_factory.mktemp("export")
    model = make_model_dir(root / "model", _tiny_plan(), folds=(0, 1))
    export_bundle(model, root / "made_here", fmt="openvino")
    moved = root / "elsewhere" / "bundle"
    moved.parent.mkdir()
    shutil.move(str(root / "made_here"), moved)
    rng = np.random.default_rng(3)
    geo = random_geometry(rng, size=(40, 36, 11))
    in_dir = root / "input"
    in_dir.mkdir()
    write_case(in_dir, "case", geo, seed=4)
    return model, moved, in_dir


def _tiny_plan():
    """The conftest's tiny plan (a module-scoped fixture cannot use the function-scoped one)."""
    from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology

    topo = Topology(((1, 3, 3), (3, 3, 3), (3, 3, 3)), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (8, 16, 32))
    cfg = Configuration(name="3d_fullres", spacing=(3.0, 1.0, 1.0), patch_size=(8, 32, 32), batch_size=2,
                        topology=topo, median_shape=(16, 48, 48), estimated_memory_gb=0.1, precision="fp32",
                        mirror_axes=(0, 1, 2), anisotropic_axis=0)
    return Plan(dataset_name="Phantom", channel_names=("MRI",),
                labels={"background": 0, "core": 1, "rim": 2, "satellite": 3},
                normalization=(ChannelNormalization("MRI", "zscore"),), configurations={"3d_fullres": cfg},
                original_median_spacing=(3.0, 1.0, 1.0), original_median_shape=(16, 48, 48), preset="test")


def test_bundle_predicts_the_model_folders_probabilities(model_and_bundle):
    from seg3d.core.bundle import Bundle
    from seg3d.io.image import read_image

    model, bundle, in_dir = model_and_bundle
    img = read_image(in_dir / "case_0000.nii.gz")
    from seg3d.inference.predictor import Predictor

    folder_ov = Predictor(model, device="cpu", backend="openvino", precision="fp32")
    from_bundle = Predictor(bundle, device="cpu", precision="fp32")
    folder_torch = Predictor(model, device="cpu", backend="torch", precision="fp32")
    assert from_bundle.backend == "openvino" and from_bundle.folds == ["0", "1"]
    a = folder_ov.predict_case(img.array, img.geometry, return_probabilities=True)
    b = from_bundle.predict_case(img.array, img.geometry, return_probabilities=True)
    c = folder_torch.predict_case(img.array, img.geometry, return_probabilities=True)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    # OpenVINO fp32 vs torch fp32; the returned probabilities are float16 (one step at 0.35 is 2.4e-4)
    np.testing.assert_allclose(b.probabilities, c.probabilities, atol=1e-3)
    m = Bundle(bundle).manifest()
    plan = folder_torch.plan
    assert m.patch_size == tuple(plan.config("3d_fullres").patch_size)
    assert m.mirror_axes == tuple(plan.config("3d_fullres").mirror_axes) and m.step == 0.5 and m.tta
    assert m.labels == dict(plan.labels) and m.folds == ("0", "1") and m.seg3d_version
    assert set(m.files) >= {"plans.json", "model.json", "networks/fold_0.xml", "networks/fold_1.bin"}
    assert not list(bundle.rglob("*.pt"))  # no checkpoint travels with a bundle


def test_bundle_runs_without_training_code_or_checkpoints(model_and_bundle, tmp_path):
    """`seg3d predict -m BUNDLE` in a fresh process where seg3d.training and seg3d.nets cannot be imported."""
    model, bundle, in_dir = model_and_bundle
    out = tmp_path / "out"
    code = ("import sys; sys.modules['seg3d.training'] = None; sys.modules['seg3d.nets'] = None\n"
            "from seg3d.cli.main import app\n"
            f"app(['predict', '-i', {str(in_dir)!r}, '-o', {str(out)!r}, '-m', {str(bundle)!r}, '--precision', "
            "'fp32'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    from seg3d.inference.predictor import Predictor
    from seg3d.io.image import read_image

    img = read_image(in_dir / "case_0000.nii.gz")
    want = Predictor(model, device="cpu", backend="openvino", precision="fp32").predict_case(img.array,
                                                                                           img.geometry)
    np.testing.assert_array_equal(read_image(out / "case.nii.gz").array, want)
    assert json.loads((out / "predict_manifest.json").read_text())["backend"] == "openvino"


def test_onnx_bundle_agrees_with_torch(model_and_bundle, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package is not installed")
    from seg3d.export import export_bundle
    from seg3d.inference.predictor import Predictor
    from seg3d.io.image import read_image

    model, _, in_dir = model_and_bundle
    bundle = export_bundle(model, tmp_path / "onnx_bundle", fmt="onnx", folds=["1"])
    assert bundle.manifest().format == "onnx" and (bundle.path / "networks" / "fold_1.onnx").is_file()
    img = read_image(in_dir / "case_0000.nii.gz")
    b = Predictor(bundle.path, device="cpu", precision="fp32").predict_case(img.array, img.geometry, True)
    t = Predictor(model, folds=["1"], device="cpu", backend="torch", precision="fp32").predict_case(
        img.array, img.geometry, True)
    np.testing.assert_allclose(b.probabilities, t.probabilities, atol=1e-3)  # float16 probabilities


def test_bundle_errors_name_the_file(model_and_bundle, tmp_path):
    from seg3d.export import export_bundle
    from seg3d.inference.predictor import Predictor

    model, bundle, _ = model_and_bundle
    with pytest.raises(Seg3dError, match="torch checkpoints"):
        Predictor(bundle, device="cpu", backend="torch")
    with pytest.raises(Seg3dError, match="not in the bundle"):
        Predictor(bundle, device="cpu", folds=["3"])
    with pytest.raises(Seg3dError, match="exists and is not empty"):
        export_bundle(model, bundle)
    with pytest.raises(Seg3dError, match="--format must be one of"):
        export_bundle(model, tmp_path / "x", fmt="tflite")
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    with open(damaged / "networks" / "fold_0.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(Seg3dError, match=r"fold_0\.bin.*does not match its checksum"):
        Predictor(damaged, device="cpu")
    (damaged / "networks" / "fold_1.xml").unlink()
    shutil.copy(bundle / "networks" / "fold_0.bin", damaged / "networks" / "fold_0.bin")
    with pytest.raises(Seg3dError, match=r"fold_1\.xml.*missing"):
        Predictor(damaged, device="cpu")


def test_cli_export_then_predict(model_and_bundle, tmp_path):
    from seg3d.cli.main import app
    from typer.testing import CliRunner

    model, _, in_dir = model_and_bundle
    res = CliRunner().invoke(app, ["export", str(model), "-o", str(tmp_path / "b"), "--folds", "0"])
    assert res.exit_code == 0, res.output
    assert "bundle written" in res.output and "fold(s) 0" in res.output
    res = CliRunner().invoke(app, ["predict", "-i", str(in_dir), "-o", str(tmp_path / "out"), "-m",
                                   str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "case.nii.gz").is_file()


def test_missing_runtime_as_a_new_user_meets_it(model_and_bundle, tmp_path):
    """openvino not importable: auto falls back to torch with one line; --backend openvino is a clear error."""
    model, bundle, in_dir = model_and_bundle
    base = ("import sys; sys.modules['openvino'] = None\nfrom seg3d.cli.main import app\n"
            "app(['predict', '-i', {i!r}, '-o', {o!r}, '-m', {m!r}, '--backend', {b!r}])")

    def run(backend, out, m=model):
        code = base.format(i=str(in_dir), o=str(tmp_path / out), m=str(m), b=backend)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                              check=False)

    auto = run("auto", "auto")
    assert auto.returncode == 0, auto.stderr
    notes = [ln for ln in (auto.stdout + auto.stderr).splitlines() if "OpenVINO is not installed" in ln]
    assert len(notes) == 1 and "torch" in notes[0]
    assert json.loads((tmp_path / "auto" / "predict_manifest.json").read_text())["backend"] == "torch"
    forced = run("openvino", "forced")
    assert forced.returncode == 1
    assert "OpenVINO runtime is not installed" in forced.stderr and "Traceback" not in forced.stderr
    from_bundle = run("auto", "b", m=bundle)
    assert from_bundle.returncode == 1 and "OpenVINO runtime is not installed" in from_bundle.stderr


def test_openvino_matches_torch_through_the_predictor_and_caches(model_and_bundle):
    from seg3d.core.model_folder import ModelFolder
    from seg3d.inference.predictor import Predictor

    model, _, _ = model_and_bundle
    x = torch.randn(1, 20, 40, 44).numpy()
    ov = Predictor(model, folds=["0"], device="cpu", backend="openvino", precision="fp32", tta=True)
    t = Predictor(model, folds=["0"], device="cpu", backend="torch", precision="fp32", tta=True)
    np.testing.assert_allclose(ov.predict_preprocessed(x).numpy(), t.predict_preprocessed(x).numpy(), atol=2e-4)
    folder = ModelFolder(model)
    entries = sorted(folder.conversion_cache_dir("openvino").glob("*/network.xml"))
    checksum = folder.weights_checksum(["0"])[:20]
    assert [e for e in entries if e.parent.name.startswith(checksum)]  # kept in the model folder, by checksum
    stamp = {e: e.stat().st_mtime_ns for e in entries}
    Predictor(model, folds=["0"], device="cpu", backend="openvino", precision="fp32")
    again = sorted(folder.conversion_cache_dir("openvino").glob("*/network.xml"))
    assert again == entries and all(e.stat().st_mtime_ns == stamp[e] for e in again)  # not converted again
