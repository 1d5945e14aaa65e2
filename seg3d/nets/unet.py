"""A plain U-Net whose stages, kernels and strides come from the plan's topology."""
from __future__ import annotations

import torch
from torch import nn

from seg3d.core.plan import Topology
from seg3d.nets import register_architecture
from seg3d.nets.blocks import conv_stage, head, init_weights, upsample


@register_architecture("unet")
class UNet(nn.Module):
    """Encoder–decoder with skip connections and optional deep supervision.

    In training mode with deep supervision the forward pass returns a list of logits, full resolution first,
    then one per coarser decoder level (the targets are downsampled to match, which is cheaper than
    upsampling every head). Otherwise it returns the full-resolution logits only.
    """

    def __init__(self, topology: Topology, in_channels: int, num_classes: int, deep_supervision: bool = True):
        super().__init__()
        ndim = len(topology.strides[0])
        f, k, s = topology.features, topology.kernel_sizes, topology.strides
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        prev = in_channels
        for i in range(topology.num_stages):
            self.encoder.append(conv_stage(ndim, prev, f[i], k[i], s[i]))
            prev = f[i]
        self.ups, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(topology.num_stages - 2, -1, -1):  # deepest decoder level first
            self.ups.append(upsample(ndim, f[i + 1], f[i], s[i + 1]))
            self.decoder.append(conv_stage(ndim, 2 * f[i], f[i], k[i], [1] * ndim))
            self.heads.append(head(ndim, f[i], num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        for j, (up, dec) in enumerate(zip(self.ups, self.decoder)):
            x = dec(torch.cat([up(x), skips[-(j + 2)]], dim=1))
            if self.deep_supervision and self.training:
                outputs.append(self.heads[j](x))
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return self.heads[-1](x)
