"""UNet++ over the plan's (possibly anisotropic) topology: nested, densely connected skip pathways.

Node ``X[i][j]`` sits at resolution level ``i`` (the encoder stage's resolution) and column ``j``: ``X[i][0]`` is
encoder stage ``i``; for ``j >= 1`` it is a conv stage (two conv–norm–act, features of stage ``i``) over the
concatenation of ``X[i][0..j-1]`` and ``X[i+1][j-1]`` upsampled with the stride of stage ``i+1``.
``X[i][L-i]`` (``L = num_stages - 1``) is the decoder path a plain U-Net would have.

Deep-supervision output contract (same as :class:`seg3d.nets.unet.UNet`, so the same loss works): in training
mode with deep supervision the forward returns ``[X[0][L], X[1][L-1], ..., X[L-1][1]]`` heads — full
resolution first, then each coarser decoder level with UNet's shapes — followed by the nested full-resolution
heads ``X[0][L-1], ..., X[0][1]``. The loss (:mod:`seg3d.losses`) groups outputs by resolution, so these extra
full-resolution heads share the full-resolution weight (UNet++'s averaged nested supervision). Otherwise the
forward returns the ``X[0][L]`` head only.
"""
from __future__ import annotations

import torch
from torch import nn

from seg3d.core.plan import Topology
from seg3d.nets import register_architecture
from seg3d.nets.blocks import conv_stage, head, init_weights, upsample


@register_architecture("unetpp")
class UNetPlusPlus(nn.Module):
    def __init__(self, topology: Topology, in_channels: int, num_classes: int, deep_supervision: bool = True):
        super().__init__()
        ndim = len(topology.strides[0])
        f, k, s = topology.features, topology.kernel_sizes, topology.strides
        n = topology.num_stages
        self.depth = n - 1
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        prev = in_channels
        for i in range(n):
            self.encoder.append(conv_stage(ndim, prev, f[i], k[i], s[i]))
            prev = f[i]
        # nodes[f"{i}_{j}"] for j >= 1, i + j <= L; keyed by string for ModuleDict
        self.ups, self.nodes, self.heads = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for j in range(1, n):
            for i in range(n - j):
                self.ups[f"{i}_{j}"] = upsample(ndim, f[i + 1], f[i], s[i + 1])
                self.nodes[f"{i}_{j}"] = conv_stage(ndim, (j + 1) * f[i], f[i], k[i], [1] * ndim)
        for key in self.supervised_nodes():
            self.heads[f"{key[0]}_{key[1]}"] = head(ndim, f[key[0]], num_classes)
        init_weights(self)

    def supervised_nodes(self) -> list[tuple[int, int]]:
        """Nodes with a head, in output order (see module docstring)."""
        L = self.depth
        main = [(i, L - i) for i in range(L)]
        nested = [(0, j) for j in range(L - 1, 0, -1)]
        return main + nested

    def forward(self, x: torch.Tensor):
        L = self.depth
        cols: list[list[torch.Tensor]] = []  # cols[i] = [X[i][0], X[i][1], ...]
        for stage in self.encoder:
            x = stage(x)
            cols.append([x])
        for j in range(1, L + 1):
            for i in range(L + 1 - j):
                key = f"{i}_{j}"
                up = self.ups[key](cols[i + 1][j - 1])
                cols[i].append(self.nodes[key](torch.cat([*cols[i][:j], up], dim=1)))
        if self.deep_supervision and self.training:
            return [self.heads[f"{i}_{j}"](cols[i][j]) for i, j in self.supervised_nodes()]
        return self.heads[f"0_{L}"](cols[0][L])
