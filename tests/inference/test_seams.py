"""The inference seams: any network call in the sliding window, the backend registry, the writers, the
case source and the batch stages one by one (as a distributed runner uses them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import write_case

from seg3d.core.settings import PredictSettings
from seg3d.errors import Seg3dError
from seg3d.inference.network_call import TorchNetwork
from seg3d.inference.sliding_window import sliding_window_predict
from seg3d.io.image import Geometry, read_header, read_image
from seg3d.io.sources import CaseSource
from seg3d.io.writers import WRITERS, format_for_path, write_mask, writer_for

GEO = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (5.0, -3.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_any_callable_is_a_network_and_equals_its_torch_module():
    """A plain function (another runtime) gives exactly what the wrapped torch module gives."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    seen = []

    def runtime(x: torch.Tensor) -> torch.Tensor:  # e.g. a compiled model of another engine
        seen.append(tuple(x.shape))
        with torch.no_grad():
            return net(x).to(torch.float16)  # any float dtype is fine

    x = np.random.default_rng(0).normal(size=(1, 10, 20, 20)).astype(np.float32)
    a = sliding_window_predict(runtime, x, (8, 16, 16), 0.5, (1,))
    b = sliding_window_predict(TorchNetwork(net, "cpu", "fp32"), x, (8, 16, 16), 0.5, (1,))
    assert seen and all(s[1:] == (1, 8, 16, 16) for s in seen)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # fp16 logits vs fp32
    assert a.shape == (3, 10, 20, 20)


def test_backend_registry_builds_one_call_per_fold(tiny_model_dir):
    from seg3d.inference import Predictor
    from seg3d.inference.backends import BACKENDS, register_backend, resolve_backend

    from seg3d.inference.backends import openvino as ov_backend

    # auto on the CPU: OpenVINO where the runtime is installed (issue 12), else torch
    assert resolve_backend("auto") == ("openvino" if ov_backend.available() else "torch") and "torch" in BACKENDS
    assert resolve_backend("torch") == "torch"
    with pytest.raises(Seg3dError, match="unknown inference backend"):
        resolve_backend("tensorrt")
    calls = []

    released = []

    class Constant:  # a stand-in runtime: background everywhere; frees its buffers when told (as OpenVINO)
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return torch.nn.functional.one_hot(torch.zeros_like(x[:, 0], dtype=torch.long), self.k) \
                .movedim(-1, 1).float() * 10

        def release(self):
            released.append(self)

    @register_backend("constant")
    def constant(model, settings):
        calls.append((model.folds, settings.backend))
        return [Constant(model.plan.num_classes) for _ in model.folds]

    try:
        p = Predictor(tiny_model_dir, PredictSettings(folds=(0, 1), backend="constant", tta=False, device="cpu"))
        labels = p.predict_case(np.random.default_rng(0).normal(size=(10, 30, 30)).astype(np.float32),
                                Geometry((30, 30, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
        assert calls == [(("0", "1"), "constant")] and len(p.networks) == 2 and not labels.any()
        assert released == p.networks  # each call's buffers freed once, after the case's sliding window
        assert p.describe()["backend"] == "constant"
    finally:
        BACKENDS.pop("constant")


def test_writers_by_format_keep_the_grid_and_the_nifti_header(tmp_path):
    ref = write_case(tmp_path / "in", "a", GEO)[0]
    source = CaseSource.from_files("a", [ref])
    assert source.format == "nifti" and source.ending == ".nii.gz" and source.size() == GEO.size
    mask = (np.arange(np.prod(GEO.shape)).reshape(GEO.shape) % 3).astype(np.uint8)
    for fmt in ("nifti", "nrrd", "mha"):
        out = tmp_path / "out" / f"a{writer_for(fmt).ending}"
        out.parent.mkdir(exist_ok=True)
        writer_for(fmt).write(mask, GEO, source, out)
        img = read_image(out)
        assert format_for_path(out) == fmt and img.geometry == GEO and np.array_equal(img.array, mask)
    nib = pytest.importorskip("nibabel")
    a, b = nib.load(str(ref)).header, nib.load(str(tmp_path / "out" / "a.nii.gz")).header
    assert np.array_equal(a.get_qform(), b.get_qform()) and np.array_equal(a.get_sform(), b.get_sform())
    write_mask(mask, GEO, tmp_path / "plain.nrrd")  # chosen by the ending, no source needed
    assert read_header(tmp_path / "plain.nrrd").geometry == GEO
    with pytest.raises(Seg3dError, match="unknown output format"):
        writer_for("dicom-seg-v9")
    with pytest.raises(Seg3dError, match="no mask writer"):
        format_for_path(tmp_path / "a.png")
    assert set(WRITERS) >= {"nifti", "nrrd", "mha"}


def test_stages_one_case_at_a_time_and_extra_output_formats(tmp_path, tiny_model_dir):
    """What a distributed runner does: list, then run_job per case anywhere, then the manifest."""
    from seg3d.inference import Predictor, stages

    in_dir = tmp_path / "in"
    for i in range(2):
        write_case(in_dir, f"c{i}", GEO, seed=i)
    (in_dir / "c9_0003.nii.gz").write_bytes(b"x")  # channel 3 of a 1-channel model: accounted as failed
    settings = PredictSettings(folds=(0,), tta=False, device="cpu", output_formats=("nifti", "mha"))
    predictor = Predictor(tiny_model_dir, settings)
    inv = stages.list_inputs(in_dir, tmp_path / "out", 1, settings)
    assert [j.case_id for j in inv.todo] == ["c0", "c1"] and [f.case for f in inv.failed] == ["c9"]
    (tmp_path / "out").mkdir()
    records = {j.case_id: stages.run_job(predictor, j) for j in inv.todo}
    assert all(r.status == "ok" for r in records.values())
    for i in range(2):
        for ending in (".nii.gz", ".mha"):
            assert read_header(tmp_path / "out" / f"c{i}{ending}").geometry == GEO
    manifest = stages.write_manifest(in_dir, tmp_path / "out", inv, records, inv.failed, settings, predictor,
                                     stages.now(), 1.0)
    summary = stages.summarize(inv, records, inv.failed, 1.0, 1.0, manifest)
    assert summary["predicted"] == 2 and len(summary["failed"]) == 1 and manifest.is_file()
    again = stages.list_inputs(in_dir, tmp_path / "out", 1, settings.with_(continue_=True))
    assert again.todo == [] and [r.case for r in again.skipped] == ["c0", "c1"]
    broken = stages.run_job(predictor, stages.Job(CaseSource.from_files("c9", [in_dir / "c9_0003.nii.gz"]),
                                                  (("nifti", tmp_path / "out" / "c9.nii.gz"),)))
    assert broken.status == "failed" and "c9_0003.nii.gz" in broken.path
