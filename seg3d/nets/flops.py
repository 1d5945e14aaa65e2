"""Forward cost of a network per patch: multiply–accumulates of its convolutions, and its parameter count.

Counted with forward hooks on the meta device (no memory, no compute; only shapes), so it works for any
network built from the plan, at any patch size, in milliseconds. Norms, activations and concatenations are
ignored (a few percent of a U-Net's cost). FLOPs = 2 × MACs.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class NetworkCost:
    macs: int          # forward multiply–accumulates for one patch (batch 1)
    parameters: int

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9

    def __str__(self) -> str:
        return f"{self.parameters / 1e6:.2f} M parameters, {self.gflops:.1f} GFLOPs per patch (forward)"


def _conv_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    k = 1
    for s in m.kernel_size:
        k *= s
    if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):  # every input voxel scatters a kernel
        return inp.numel() // inp.shape[0] * k * m.out_channels // m.groups
    return out.numel() // out.shape[0] * k * m.in_channels // m.groups


def network_cost(net: nn.Module, in_channels: int, patch_size: Sequence[int]) -> NetworkCost:
    """MACs of one forward pass on a ``(1, in_channels, *patch_size)`` input, and parameters of ``net``."""
    params = sum(p.numel() for p in net.parameters())
    meta = copy.deepcopy(net).to("meta") if any(not p.is_meta for p in net.parameters()) else net
    total = [0]

    def hook(m, args, out):
        total[0] += _conv_macs(m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, _CONVS)]
    was_training = meta.training
    try:
        meta.eval()
        with torch.no_grad():
            meta(torch.empty(1, in_channels, *patch_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
        meta.train(was_training)
    return NetworkCost(macs=int(total[0]), parameters=int(params))


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (2 × MACs) for an input of ``input_shape`` = ``(B, C, *patch)``."""
    b, c, *patch = input_shape
    return 2 * b * network_cost(net, c, patch).macs
