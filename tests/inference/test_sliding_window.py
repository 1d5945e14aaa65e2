"""Sliding window: coverage, Gaussian blending, mirroring TTA and fold ensembles against direct computation.

Exactness tests (1e-5 against a direct float32 computation) pin ``precision="fp32"``: ``auto`` picks bf16 on
CPUs with native bf16 (AVX-512 BF16 / AMX), and bf16 is not exact. The bf16 path has tests of its own at the
end, which run where bf16 is native and skip elsewhere (emulated bf16 is 55-170x slower than fp32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg3d.inference.sliding_window import (
    gaussian_importance,
    mirror_combinations,
    sliding_window_predict,
    window_starts,
)


@pytest.mark.parametrize("size,patch,step", [(70, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5), (100, 16, 0.25),
                                             (50, 20, 1.0)])
def test_window_starts_cover_and_respect_step(size, patch, step):
    starts = window_starts(size, patch, step)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - patch
        covered[s:s + patch] = True
    assert covered.all()
    assert max(np.diff(starts), default=0) <= int(np.ceil(patch * step))


def test_gaussian_is_centred_positive_and_sigma_one_eighth():
    g = gaussian_importance((9, 17, 17)).numpy()
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    assert np.unravel_index(g.argmax(), g.shape) == (4, 8, 8)
    # along one axis through the centre: exp(-d^2 / (2 sigma^2)) with sigma = 17/8
    d = 4
    assert g[4, 8, 8 + d] == pytest.approx(np.exp(-d * d / (2 * (17 / 8) ** 2)), rel=1e-5)


def _full_softmax(net, x):
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)[None]), 1)[0]


@pytest.mark.parametrize("shape", [(9, 70, 33), (20, 40, 64), (5, 10, 12)])  # last: smaller than the patch
def test_pointwise_network_equals_whole_image_softmax(shape):
    """A 1x1x1 network has no context: blended windows (with mirroring) must equal one whole-image pass."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 1)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    probs = sliding_window_predict(net, x, (8, 32, 32), 0.5, (0, 1, 2), precision="fp32")
    assert probs.shape == (4, *shape)
    torch.testing.assert_close(probs, _full_softmax(net, x), atol=1e-5, rtol=1e-5)


def test_tta_and_ensemble_equal_direct_average():
    """One window: the result is the plain mean over folds and all 8 mirrorings of the un-mirrored softmax."""
    torch.manual_seed(1)
    nets = [torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Conv3d(3, 3, 3, padding=1)).eval() for _ in range(2)]
    x = np.random.default_rng(1).normal(size=(1, 8, 16, 12)).astype(np.float32)
    got = sliding_window_predict(nets, x, (8, 16, 12), 0.5, (0, 1, 2), precision="fp32")
    xt = torch.from_numpy(x)[None]
    expected = torch.zeros_like(got)
    combos = mirror_combinations((0, 1, 2))
    assert len(combos) == 8
    with torch.no_grad():
        for net in nets:
            for c in combos:
                axes = [a + 2 for a in c]
                out = net(xt.flip(axes) if axes else xt)
                p = torch.softmax(out, 1)
                expected += (p.flip(axes) if axes else p)[0]
    expected /= 16
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # mirroring changes the answer for a network that is not mirror-symmetric: the test is not vacuous
    plain = sliding_window_predict(nets[:1], x, (8, 16, 12), 0.5, (), precision="fp32")
    assert (plain - got).abs().max() > 1e-3


def test_two_d_network_predicts_slice_by_slice():
    torch.manual_seed(2)
    net2d = torch.nn.Conv2d(1, 3, 1)
    x = np.random.default_rng(2).normal(size=(1, 6, 40, 50)).astype(np.float32)
    for axis in (0, 2):
        patch = (32, 32)
        probs = sliding_window_predict(net2d, x, patch, 0.5, (0, 1), slice_axis=axis, precision="fp32")
        with torch.no_grad():
            xs = torch.from_numpy(x).movedim(1 + axis, 0)  # (S, C, a, b)
            ref = torch.softmax(net2d(xs), 1).movedim(0, 1 + axis)
        torch.testing.assert_close(probs, ref, atol=1e-5, rtol=1e-5)


def test_restores_training_mode_and_handles_deep_supervision_lists(tiny_plan):
    from seg3d.nets import build_network

    net = build_network(tiny_plan.config("3d_fullres"), 1, 4, deep_supervision=True).train()
    x = np.random.default_rng(3).normal(size=(1, 10, 40, 36)).astype(np.float32)
    probs = sliding_window_predict([net], x, (8, 32, 32), 0.5, (1, 2))
    assert net.training
    assert probs.shape == (4, 10, 40, 36)
    torch.testing.assert_close(probs.sum(0), torch.ones(10, 40, 36), atol=1e-4, rtol=0)


class _BatchRecorder(torch.nn.Module):
    """Wraps a network and records the batch size of every forward pass."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x)


def test_cpu_forward_passes_hold_two_windows_and_batching_does_not_change_the_result():
    """Batch-1 3D convolutions fall back to slow_conv3d on the CPU, so passes carry >= 2 windows; a network
    with per-sample normalization must give the same probabilities whatever the batching."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4),
                              torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    x = np.random.default_rng(4).normal(size=(1, 20, 24, 24)).astype(np.float32)
    small, big = _BatchRecorder(net), _BatchRecorder(net)
    tiny_budget = sliding_window_predict(small, x, (8, 16, 16), 0.5, (0,), batch_voxels=8 * 16 * 16,
                                         precision="fp32")
    large_budget = sliding_window_predict(big, x, (8, 16, 16), 0.5, (0,), batch_voxels=10**9, precision="fp32")
    n_items = 4 * 2 * 2 * 2  # 4 x 2 x 2 windows, 2 mirrorings
    assert sum(small.batches) == sum(big.batches) == n_items
    assert min(small.batches) >= 2 and big.batches == [n_items]
    torch.testing.assert_close(tiny_budget, large_budget, atol=1e-5, rtol=1e-5)


# --- bf16: what ``precision="auto"`` uses on CPUs with native bf16 --------------------------------------------

def test_auto_precision_follows_the_cpu_kind():
    """``auto`` is bf16 exactly where the CPU has native bf16 convolutions, float32 elsewhere (runs everywhere)."""
    from seg3d.core.device import cpu_has_fast_bf16, resolve_precision

    want = torch.bfloat16 if cpu_has_fast_bf16() else None
    assert resolve_precision("auto", torch.device("cpu")) is want
    assert resolve_precision("fp32", torch.device("cpu")) is None


def _native_bf16() -> bool:
    from seg3d.core.device import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


native_bf16 = pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bf16 convolutions "
                                 "(no AVX512-BF16/AMX): bf16 is emulated there and auto uses fp32")


@native_bf16
@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_bf16_probabilities_are_close_to_fp32_and_masks_agree(tiny_plan, precision):
    """Under bf16 autocast the blended probabilities stay within bf16 rounding of fp32 and the argmax agrees."""
    from seg3d.nets import build_network

    torch.manual_seed(5)
    net = build_network(tiny_plan.config("3d_fullres"), 1, 4, deep_supervision=False).eval()
    x = np.random.default_rng(5).normal(size=(1, 12, 40, 36)).astype(np.float32)
    fp32 = sliding_window_predict(net, x, (8, 32, 32), 0.5, (1, 2), precision="fp32")
    low = sliding_window_predict(net, x, (8, 32, 32), 0.5, (1, 2), precision=precision)
    assert low.dtype == torch.float32 and low.shape == fp32.shape
    torch.testing.assert_close(low.sum(0), torch.ones(fp32.shape[1:]), atol=1e-4, rtol=0)
    assert (low - fp32).abs().max() < 0.05  # bf16 keeps 8 bits of mantissa
    assert (low - fp32).abs().max() > 0  # it really ran in bf16: not the fp32 path
    agree = (low.argmax(0) == fp32.argmax(0)).float().mean().item()
    assert agree > 0.99


@native_bf16
def test_bf16_pointwise_network_matches_whole_image_softmax_at_bf16_tolerance():
    """The exactness test of the blending, at bf16's tolerance: windows, mirroring and padding stay right."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 1)
    x = np.random.default_rng(0).normal(size=(2, 9, 70, 33)).astype(np.float32)
    probs = sliding_window_predict(net, x, (8, 32, 32), 0.5, (0, 1, 2), precision="bf16")
    torch.testing.assert_close(probs, _full_softmax(net, x), atol=3e-2, rtol=0)


@pytest.mark.parametrize("flip_chunk", [2**24, 2 * 4 * 6 * 5])
def test_per_window_accumulation_equals_per_item(monkeypatch, flip_chunk):
    """The two ways of adding a batch into the accumulator (in place per item, mirrored items flipped a few
    classes at a time; summed per window first, as when the accumulator lives on the CPU and the network on a
    GPU) give the same result, windows and mirrorings mixed in one batch."""
    from seg3d.inference import sliding_window
    from seg3d.inference.sliding_window import _accumulate, window_items

    monkeypatch.setattr(sliding_window, "_FLIP_CHUNK_VOXELS", flip_chunk)  # 2 of the 3 classes per flip

    torch.manual_seed(2)
    patch = (4, 6, 5)
    items = window_items((7, 10, 9), patch, 0.5, (0, 2))[:11]
    assert len({s for s, _ in items}) > 1 and any(c for _, c in items)
    probs = torch.rand(len(items), 3, *patch)
    gauss = gaussian_importance(patch)
    a = torch.zeros(3, 7, 10, 9)
    b = torch.zeros(3, 7, 10, 9)
    _accumulate(a, probs, items, patch, gauss, per_window=False)
    _accumulate(b, probs, items, patch, gauss, per_window=True)
    expected = torch.zeros(3, 7, 10, 9)
    for i, (start, c) in enumerate(items):
        sl = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
        expected[sl] += (probs[i].flip([d + 1 for d in c]) if c else probs[i]) * gauss
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, expected)
    assert expected.abs().sum() > 0


class _ProbabilitiesInOneBuffer:
    """A network call like OpenVINO's with the softmax in the graph: probabilities, in one output buffer that
    every call overwrites (so the sliding window must use a call's output before calling it again)."""

    returns_probabilities = True

    def __init__(self, net):
        self.net, self.buffer = net, None

    def __call__(self, x):
        p = torch.softmax(self.net(x), 1)
        if self.buffer is None or self.buffer.shape != p.shape:
            self.buffer = torch.empty_like(p)
        return self.buffer.copy_(p)


@pytest.mark.parametrize("patch,slice_axis", [((4, 8, 8), None), ((8, 8), 1)])
def test_calls_returning_probabilities_in_a_reused_buffer_equal_the_modules(patch, slice_axis):
    """A fold ensemble of such calls, with TTA, several windows and mirrorings per pass, a last pass of another
    batch size, and an image smaller than the patch along one axis: the modules' own result."""
    torch.manual_seed(3)
    conv = torch.nn.Conv3d if slice_axis is None else torch.nn.Conv2d
    nets = [torch.nn.Sequential(conv(1, 3, 3, padding=1), torch.nn.Tanh(), conv(3, 3, 3, padding=1)).eval()
            for _ in range(2)]
    x = np.random.default_rng(3).normal(size=(1, 3, 13, 11)).astype(np.float32)
    kw = {"slice_axis": slice_axis, "precision": "fp32", "batch_voxels": 3 * 4 * 8 * 8}
    want = sliding_window_predict(nets, x, patch, 0.5, (0, 1), **kw)
    got = sliding_window_predict([_ProbabilitiesInOneBuffer(n) for n in nets], x, patch, 0.5, (0, 1), **kw)
    assert got.shape == (3, 3, 13, 11)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
