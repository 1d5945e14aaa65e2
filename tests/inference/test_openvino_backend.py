"""The OpenVINO network call: conversion agrees with torch, dynamic shapes, the conversion cache, precision."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from seg3d.errors import Seg3dError

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed (make test installs it)")
from seg3d.inference.backends import openvino as ovb


@pytest.fixture(scope="module")
def tiny_net():
    from seg3d.core.plan import Topology
    from seg3d.nets.unet import UNet

    torch.manual_seed(0)
    topo = Topology(((1, 3, 3), (3, 3, 3), (3, 3, 3)), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (8, 16, 32))
    return UNet(topo, 1, 4, deep_supervision=True).eval()


@pytest.fixture(scope="module")
def converted(tiny_net, tmp_path_factory):
    root = tmp_path_factory.mktemp("ovcache")
    entry = ovb.find_or_convert(ovb.state_dict_checksum(tiny_net.state_dict()), lambda: tiny_net, 1,
                                (8, 32, 32), [root])
    return root, entry


def test_fp32_matches_torch_for_any_batch_and_window(tiny_net, converted):
    _, entry = converted
    call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1)
    assert call.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert call.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    for shape in [(2, 1, 8, 32, 32), (5, 1, 8, 32, 32), (1, 1, 16, 48, 40)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = tiny_net(x)
        out = call(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert float((out - ref).abs().max()) < 1e-3 * max(1.0, float(ref.abs().max()))


def test_softmax_inside_the_network_returns_probabilities(tiny_net, converted):
    """``softmax=True``: the call returns torch's softmax of the logits (to float rounding) and says so, so
    the sliding window does not apply a second softmax; not offered in bf16."""
    from seg3d.inference.sliding_window import _forward

    _, entry = converted
    logits_call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1)
    prob_call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, softmax=True)
    assert prob_call.returns_probabilities and not getattr(logits_call, "returns_probabilities", False)
    for shape in [(2, 1, 8, 32, 32), (1, 1, 16, 48, 40)]:
        x = torch.randn(shape)
        expect = torch.softmax(logits_call(x), 1)
        probs = prob_call(x)
        assert probs.shape == expect.shape
        assert float((probs - expect).abs().max()) < 1e-5
        assert float((_forward(prob_call, x, None) - expect).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="bf16"):
        ovb.OpenVinoNetwork(entry.xml, "bf16", threads=1, softmax=True)


def test_one_window_per_call_compiles_a_static_shape_and_falls_back_for_others(tiny_net, converted):
    """``window=``: compiled for batch-1 calls of that window (same results as the dynamic network); a call of
    another shape recompiles the dynamic network once and is answered correctly."""
    _, entry = converted
    dynamic = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, softmax=True)
    static = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, softmax=True, window=(8, 32, 32))
    assert dynamic.static_shape is None and static.static_shape == (1, 1, 8, 32, 32)
    assert static.compiled.inputs[0].get_partial_shape().is_static
    x = torch.randn(1, 1, 8, 32, 32)
    assert float((static(x) - dynamic(x)).abs().max()) < 1e-6
    other = torch.randn(2, 1, 16, 48, 40)
    expect = dynamic(other).clone()
    assert float((static(other) - expect).abs().max()) < 1e-6
    assert static.static_shape is None and static.compiled.inputs[0].get_partial_shape().is_dynamic
    assert float((static(x) - dynamic(x)).abs().max()) < 1e-6


def test_compiled_cache_is_hit_again_with_the_softmax_and_the_static_window(converted, tmp_path):
    """The appended softmax has fixed names: OpenVINO's compiled-model cache keys on the graph, node names
    included, and auto-generated names depend on how many nodes the process made before (another fold, NNCF,
    a recompile), which missed the cache and added a blob each time."""
    from openvino import opset13

    _, entry = converted
    x = torch.randn(1, 1, 8, 32, 32)
    for window in (None, (8, 32, 32)):
        cache = tmp_path / f"compiled-{window is None}"
        first = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, compiled_cache=cache, softmax=True, window=window)
        expect = first(x).clone()
        blobs = sorted(cache.glob("*.blob"))
        assert len(blobs) == 1
        opset13.relu(opset13.parameter([1], ov.Type.f32))  # the process makes other nodes in between
        again = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, compiled_cache=cache, softmax=True, window=window)
        assert sorted(cache.glob("*.blob")) == blobs
        assert torch.equal(again(x), expect)


def test_release_frees_the_request_and_the_next_call_makes_a_new_one(converted):
    _, entry = converted
    call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, softmax=True, window=(8, 32, 32))
    x = torch.randn(1, 1, 8, 32, 32)
    before = call(x).clone()
    call.release()
    assert call._request is None
    assert torch.equal(call(x), before) and call._request is not None


def test_single_window_only_for_patches_that_fill_a_pass():
    assert ovb.single_window((64, 128, 128)) == (64, 128, 128)
    assert ovb.single_window((40, 56, 40)) is None  # two of them fit in one CPU pass
    assert ovb.single_window((128, 128)) is None  # 2D


def _runtime_output(call, x):
    """What OpenVINO gives on a request of its own that allocates the output (the copy it used to return)."""
    request = call.compiled.create_infer_request()
    request.infer({0: x.numpy()})
    return torch.from_numpy(request.get_output_tensor(0).data.copy())


@pytest.mark.parametrize("copy_output", [False, True])
def test_calls_are_bit_identical_to_the_runtime_when_batch_and_window_change(converted, copy_output):
    """Input shared with OpenVINO, output a view of its buffer (or copied once): results are bit-identical to
    the runtime's own output whatever the order of batch and window changes; with ``copy_output`` an output
    handed out earlier is never overwritten by a later call."""
    _, entry = converted
    call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1, copy_output=copy_output)
    torch.manual_seed(1)
    shapes = [(2, 1, 8, 32, 32)] * 3 + [(5, 1, 8, 32, 32), (1, 1, 16, 48, 40), (2, 1, 8, 32, 32),
                                        (1, 1, 16, 48, 40), (5, 1, 8, 32, 32), (1, 1, 8, 32, 32)] * 2
    kept = []
    for shape in shapes:
        x = torch.randn(shape)
        x_before = x.clone()
        out = call(x)
        assert out.shape == (shape[0], 4, *shape[2:]) and out.dtype == torch.float32 and out.is_contiguous()
        assert torch.equal(out, _runtime_output(call, x)) and torch.equal(x, x_before)
        kept.append((out, out.clone()))
    if copy_output:
        assert all(torch.equal(a, b) for a, b in kept)
    else:  # no copy: the last output is the runtime's own buffer
        assert kept[-1][0].data_ptr() == call._request.get_output_tensor(0).data.ctypes.data
    # a non-contiguous input (a mirrored view) gives what its contiguous copy gives
    x = torch.randn(2, 1, 8, 32, 32)
    assert torch.equal(call(x.transpose(3, 4)), _runtime_output(call, x.transpose(3, 4).contiguous()))


def test_an_output_shape_other_than_the_input_window_is_copied_not_missed(tmp_path):
    """A network whose output window differs from its input's (unpadded convolution): the output shape comes
    from the runtime, never assumed from the input's."""
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3), torch.nn.ReLU()).eval()
    entry = ovb.find_or_convert(ovb.state_dict_checksum(net.state_dict()), lambda: net, 1, (8, 16, 16),
                                [tmp_path], log=lambda _m: None)
    call = ovb.OpenVinoNetwork(entry.xml, "fp32", threads=1)
    for _ in range(3):
        x = torch.randn(2, 1, 8, 16, 16)
        with torch.no_grad():
            ref = net(x)
        out = call(x)
        assert out.shape == (2, 3, 6, 14, 14)
        assert float((out - ref).abs().max()) < 1e-4


def test_conversion_is_cached_by_weights_and_runtime_version(tiny_net, converted):
    root, entry = converted
    assert entry.converted_now and entry.xml.is_file() and entry.xml.with_suffix(".bin").is_file()
    assert ovb.runtime_version() in entry.folder.name

    def must_not_build():
        raise AssertionError("a cached network was converted again")

    again = ovb.find_or_convert(ovb.state_dict_checksum(tiny_net.state_dict()), must_not_build, 1, (8, 32, 32),
                                [root])
    assert again.folder == entry.folder and not again.converted_now
    # other weights -> another entry; the compiled-model cache is per precision and machine kind
    other = {k: v + 1 for k, v in tiny_net.state_dict().items()}
    assert ovb.state_dict_checksum(other) != ovb.state_dict_checksum(tiny_net.state_dict())
    assert entry.compiled_cache("fp32") != entry.compiled_cache("bf16")
    assert ovb.cpu_kind() in entry.compiled_cache("fp32").name
    assert not list(Path(root).glob(".*"))  # no temporary folder left behind


def test_unwritable_model_folder_falls_back_to_the_next_cache(tiny_net, converted, tmp_path):
    root, entry = converted
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the model folder's cache would go")
    # an existing entry in a later root is found without converting
    found = ovb.find_or_convert(ovb.state_dict_checksum(tiny_net.state_dict()), lambda: None, 1, (8, 32, 32),
                                [blocked / "cache", root])
    assert found.folder == entry.folder and not found.converted_now
    with pytest.raises(Seg3dError, match="cannot write the OpenVINO conversion cache"):
        ovb.find_or_convert("0" * 64, lambda: tiny_net, 1, (8, 32, 32), [blocked / "cache"])


def test_precision_rules(monkeypatch):
    with pytest.raises(Seg3dError, match="fp16 is not offered"):
        ovb.resolve_precision("fp16")
    with pytest.raises(Seg3dError, match="precision must be one of"):
        ovb.resolve_precision("int4")
    assert ovb.resolve_precision("fp32") == "fp32"
    import seg3d.core.device as sw

    monkeypatch.setattr(sw, "cpu_has_fast_bf16", lambda: False)
    assert ovb.resolve_precision("auto") == "fp32"
    with pytest.raises(Seg3dError, match="needs a CPU with native bf16"):
        ovb.resolve_precision("bf16")
    monkeypatch.setattr(sw, "cpu_has_fast_bf16", lambda: True)
    assert ovb.resolve_precision("auto") == "fp32"  # fp32 through OpenVINO by default, even with native bf16
    assert ovb.resolve_precision("bf16") == "bf16"


def test_missing_runtime_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert not ovb.available()
    with pytest.raises(Seg3dError, match=r"pip install 'seg3d\[openvino\]'"):
        ovb.require()


def test_conversion_is_announced_with_its_cache_and_time_on_a_miss_only(tiny_plan, tmp_path):
    """A first use converts (seconds to a minute): one line before naming the cache, its time after, through
    the library's log (default: the ``seg3d`` logger the CLI prints); a cached model says nothing."""
    import logging

    from inference_helpers import make_model_dir

    from seg3d.inference.predictor import Predictor

    model = make_model_dir(tmp_path / "model", tiny_plan, folds=(0, 1))
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("seg3d"), Collect()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        Predictor(model, device="cpu", backend="openvino", precision="fp32")
        cache = model / "openvino_cache"
        entries = sorted(p.name for p in cache.iterdir())
        assert len(entries) == 2 and len(lines) == 4, lines
        for k, fold in enumerate(("0", "1")):
            before, after = lines[2 * k], lines[2 * k + 1]
            assert before.startswith(f"converting fold {fold} to OpenVINO IR once for this model; cached in ")
            assert before.split("cached in ")[1].startswith(str(cache)) and \
                before.rsplit("/", 1)[1] in entries
            assert re.fullmatch(rf"converted fold {fold} to OpenVINO IR in \d+\.\d s", after), after
        lines.clear()
        own: list[str] = []
        Predictor(model, device="cpu", backend="openvino", precision="fp32", log=own.append)
        assert lines == [] and own == []  # a cache hit is silent
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    # the log given to the Predictor gets the lines (the batch runner passes its own)
    shutil.rmtree(cache)
    Predictor(model, device="cpu", backend="openvino", precision="fp32", folds=[1], log=own.append)
    assert len(own) == 2 and own[0].startswith("converting fold 1 ") and own[1].startswith("converted fold 1 ")
