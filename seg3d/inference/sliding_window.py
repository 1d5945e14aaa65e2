"""Sliding-window prediction with Gaussian importance weighting, mirroring TTA and a fold ensemble.

One function, shared by ``seg3d predict`` and the trainer's end-of-fold validation. It calls networks through
the :data:`~seg3d.inference.network_call.NetworkCall` seam and knows nothing of torch modules, autocast or
runtimes (a module given directly is wrapped in a :class:`~seg3d.inference.network_call.TorchNetwork`). Softmax probabilities
(not logits) are averaged over mirrorings and folds, weighted per voxel by a Gaussian centred on each window
(sigma = patch/8), because predictions near a window's border see less context and are less reliable.

Windows are batched per forward pass; the input lives on the compute device once, the accumulator stays on
the device unless it would not fit (then it lives on the CPU and windows are copied back as they finish).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from seg3d.inference.network_call import NetworkCall, as_network_calls

# Voxels (windows x patch, times mirrorings) fed to one forward pass; bounded to keep activations small.
# On the CPU a pass of windows up to that size holds at least 2 of them: PyTorch sends batch-1 3D
# convolutions with few channels x rows (the deeper stages of a small-patch UNet) to slow_conv3d instead
# of oneDNN, and 2-4 windows per pass cost about 1.5x less per window (32x48x32, benchmarks/RESULTS.md).
_CPU_BATCH_VOXELS = 64 * 64 * 64
_CPU_MIN_BATCH = 2
_GPU_BATCH_VOXELS = 8 * 128 * 128 * 128
_FLIP_CHUNK_VOXELS = 2**24  # values of a mirrored window flipped at once (64 MB in float32)


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Evenly spread window starts covering ``size`` with windows of ``patch``, at most ``patch*step`` apart."""
    if size <= patch:
        return [0]
    stride = max(1.0, patch * step)
    n = int(math.ceil((size - patch) / stride)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, n)})


@lru_cache(maxsize=16)
def _gaussian_np(patch: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    grids = []
    for p in patch:
        c = (p - 1) / 2.0
        s = max(p * sigma_scale, 1e-6)
        grids.append(np.exp(-((np.arange(p) - c) ** 2) / (2 * s * s)))
    g = grids[0]
    for h in grids[1:]:
        g = np.multiply.outer(g, h)
    g = g / g.max()
    return np.maximum(g, max(g.min(), 1e-4)).astype(np.float32)  # never zero: every voxel gets a weight


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125, device="cpu") -> torch.Tensor:
    """Separable Gaussian over a window, peak 1, strictly positive."""
    return torch.from_numpy(_gaussian_np(tuple(int(p) for p in patch), float(sigma_scale))).to(device)


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of the mirror axes, the identity first (2^n forward passes)."""
    axes = tuple(sorted(set(int(a) for a in mirror_axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def window_items(shape: Sequence[int], patch: Sequence[int], step: float,
                 mirror_axes: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The forward passes of one image: every window start under every mirroring, ``(start, flipped axes)``."""
    starts = itertools.product(*(window_starts(s, p, step) for s, p in zip(shape, patch)))
    combos = mirror_combinations(mirror_axes)
    return [(start, c) for start in starts for c in combos]


def sliding_window_predict(networks: NetworkCall | Sequence[NetworkCall], data, patch: Sequence[int],
                           step: float = 0.5, mirror_axes: Sequence[int] = (), device="cpu", *,
                           num_classes: int | None = None, slice_axis: int | None = None,
                           precision: str = "auto", channels_last: bool | None = None,
                           batch_voxels: int | None = None, accumulate_on: str = "auto",
                           sigma_scale: float = 0.125) -> torch.Tensor:
    """Softmax probabilities ``(K, z, y, x)`` float32 for a preprocessed image ``data`` ``(C, z, y, x)``.

    ``networks``: one network call or a fold ensemble of them (their probabilities are averaged); torch modules
    are wrapped in :class:`~seg3d.inference.network_call.TorchNetwork` with ``precision`` and ``channels_last``
    (which only apply to them). ``patch``: the network's
    window, 3 entries, or 2 entries with ``slice_axis`` for 2D networks (the image is then predicted
    slice by slice along that axis and ``mirror_axes`` index the two in-plane axes). ``step``: distance
    between windows as a fraction of the patch (0.5 = half-overlapping). ``mirror_axes``: axes the model
    was trained to mirror; every combination is predicted and averaged. The result lives on ``device`` (or
    on the CPU when ``accumulate_on="cpu"`` or, under ``auto``, when the volume is too large for the GPU).
    """
    device = torch.device(device)
    nets = as_network_calls(networks, device, precision, channels_last)
    if not nets:
        raise ValueError("sliding_window_predict needs at least one network")
    x = torch.as_tensor(data) if not isinstance(data, torch.Tensor) else data
    if x.ndim != 4:
        raise ValueError(f"data must be (C, z, y, x), got shape {tuple(x.shape)}")
    patch3, mirror3 = _as_3d(patch, mirror_axes, slice_axis)
    x, inner = _on_device_padded(x, patch3, device)
    padded = tuple(x.shape[1:])
    items = window_items(padded, patch3, step, mirror3)
    forward_batch = windows_per_pass(patch3, device, batch_voxels)
    gauss = gaussian_importance(patch3, sigma_scale, device)
    acc = weight = None
    with torch.no_grad():
        for b0 in range(0, len(items), forward_batch):
            batch = items[b0:b0 + forward_batch]
            xs = _window_batch(x, batch, patch3)
            for net in nets:
                probs = _forward(net, xs, slice_axis)
                if acc is None:
                    acc_dev = _accumulator_device(accumulate_on, device, probs.shape[1], padded)
                    acc = torch.zeros((probs.shape[1], *padded), dtype=torch.float32, device=acc_dev)
                    weight = torch.zeros(padded, dtype=torch.float32, device=acc_dev)
                    g_weight = gauss.to(acc_dev) * len(nets)  # each item adds every network's probabilities
                _accumulate(acc, probs, batch, patch3, gauss)
            for start, _ in batch:
                weight[tuple(slice(a, a + p) for a, p in zip(start, patch3))] += g_weight
    acc /= weight
    if padded != tuple(s.stop - s.start for s in inner):
        acc = acc[(slice(None), *inner)].contiguous()
    if num_classes is not None and acc.shape[0] != num_classes:
        raise ValueError(f"network predicts {acc.shape[0]} classes, expected {num_classes}")
    return acc


def _on_device_padded(x: torch.Tensor, patch3: tuple[int, ...], device: torch.device):
    """``x`` as float32 on ``device``, zero-padded (zero = the normalized mean), centred, to at least one patch;
    and the slices of the original image inside it (cropped off again at the end)."""
    spatial = tuple(int(s) for s in x.shape[1:])
    pad = [max(p - s, 0) for p, s in zip(patch3, spatial)]
    inner = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    x = x.to(device, dtype=torch.float32, non_blocking=True)
    if any(pad):
        xp = torch.zeros((x.shape[0], *(s + p for s, p in zip(spatial, pad))), dtype=torch.float32, device=device)
        xp[(slice(None), *inner)] = x
        x = xp
    return x, inner


def windows_per_pass(patch3: tuple[int, ...], device: torch.device, batch_voxels: int | None = None) -> int:
    """(window, mirroring) items per forward pass: up to ``batch_voxels`` voxels, at least 2 small windows on
    the CPU (see the module constants)."""
    if batch_voxels is None:
        batch_voxels = _GPU_BATCH_VOXELS if device.type == "cuda" else _CPU_BATCH_VOXELS
    patch_voxels = int(np.prod(patch3))
    forward_batch = max(1, batch_voxels // patch_voxels)
    if device.type == "cpu" and patch_voxels <= batch_voxels:  # small windows only: large ones stay in bounds
        forward_batch = max(forward_batch, _CPU_MIN_BATCH)
    return forward_batch


def _as_3d(patch: Sequence[int], mirror_axes: Sequence[int], slice_axis: int | None):
    patch = [int(p) for p in patch]
    if len(patch) == 3 and slice_axis is None:
        return tuple(patch), tuple(int(a) for a in mirror_axes)
    if len(patch) != 2 or slice_axis not in (0, 1, 2):
        raise ValueError(f"patch {patch} needs 3 entries, or 2 entries and slice_axis 0/1/2")
    inplane = [a for a in range(3) if a != slice_axis]
    patch.insert(slice_axis, 1)
    return tuple(patch), tuple(inplane[int(a)] for a in mirror_axes)


def _accumulator_device(accumulate_on: str, device: torch.device, k: int, shape) -> torch.device:
    if accumulate_on == "cpu" or device.type != "cuda":
        return torch.device("cpu") if accumulate_on == "cpu" else device
    if accumulate_on == "device":
        return device
    need = 4 * (k + 1) * int(np.prod(shape))
    free, _ = torch.cuda.mem_get_info(device)
    return device if need < 0.5 * free else torch.device("cpu")


def _window_batch(x: torch.Tensor, items, patch3) -> torch.Tensor:
    """The windows of a batch of (window start, mirrored axes) items, mirrored: ``(B, C, *patch)``."""
    def crop(start):
        return x[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, patch3))]

    return torch.stack([crop(s).flip([a + 1 for a in c]) if c else crop(s) for s, c in items])


def _accumulate(acc: torch.Tensor, probs: torch.Tensor, items, patch3, gauss: torch.Tensor,
                per_window: bool | None = None) -> None:
    """Add each item's probabilities ``probs[i]`` ``(K, *patch)``, un-mirrored and Gaussian-weighted, into its
    window of ``acc``. In place (``addcmul_``): no window-sized temporaries beyond a mirrored item's flip, which
    matters with 100+ classes (one 64x128x128 window of 118 classes is 495 MB). The Gaussian is symmetric, so
    weighting before or after the flip is the same. ``per_window`` (default: when ``acc`` is on another
    device than ``probs``) sums a window's items on ``probs``' device first, then adds them with one copy."""
    def unmirrored(i, c):
        return probs[i].flip([a + 1 for a in c]) if c else probs[i]

    def window(start):
        return acc[(slice(None),) + tuple(slice(a, a + s) for a, s in zip(start, patch3))]

    if per_window is None:
        per_window = probs.device != acc.device
    if not per_window:
        for i, (start, c) in enumerate(items):
            w = window(start)
            if not c:
                w.addcmul_(probs[i], gauss)
                continue
            # a mirrored item is flipped a few classes at a time: flip() copies, and a whole 118-class window is
            # 495 MB on top of the runtime's buffers (large CT with TTA: the process's peak)
            step = max(1, _FLIP_CHUNK_VOXELS // max(1, int(probs[i, 0].numel())))
            dims = [a + 1 for a in c]
            for k0 in range(0, probs.shape[1], step):
                w[k0:k0 + step].addcmul_(probs[i, k0:k0 + step].flip(dims), gauss)
        return
    # accumulator on the CPU for a volume too large for the GPU: sum a window's mirrorings on the device,
    # then one copy per window
    for start, group in itertools.groupby(enumerate(items), key=lambda item: item[1][0]):
        total = None
        for i, (_, c) in group:
            total = unmirrored(i, c) * gauss if total is None else total.addcmul_(unmirrored(i, c), gauss)
        window(start).add_(total.to(acc.device))


def _forward(net: NetworkCall, x: torch.Tensor, slice_axis) -> torch.Tensor:
    """Softmax of one network call; 2D networks see the windows with the slice axis squeezed out."""
    if slice_axis is not None:
        x = x.squeeze(2 + slice_axis)
    out = net(x)
    if isinstance(out, (list, tuple)):  # a call that returns deep-supervision outputs: full resolution first
        out = out[0]
    p = out.float() if getattr(net, "returns_probabilities", False) else torch.softmax(out.float(), dim=1)
    if slice_axis is not None:
        p = p.unsqueeze(2 + slice_axis)
    return p.contiguous()
