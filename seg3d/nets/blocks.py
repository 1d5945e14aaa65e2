"""Building blocks shared by the U-Net variants (MONAI's DynUNet blocks, configured as nnU-Net does)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# MONAI imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

NORM = ("INSTANCE", {"affine": True})
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def conv_stage(ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]) -> nn.Module:
    """Two conv–InstanceNorm–LeakyReLU; the first convolution carries the stride."""
    from monai.networks.blocks.dynunet_block import UnetBasicBlock

    return UnetBasicBlock(ndim, in_ch, out_ch, kernel_size=tuple(kernel), stride=tuple(stride),
                          norm_name=NORM, act_name=ACT)


def upsample(ndim: int, in_ch: int, out_ch: int, stride: Sequence[int]) -> nn.Module:
    """Transposed convolution whose kernel equals its stride (no overlap, no checkerboard)."""
    conv = nn.ConvTranspose3d if ndim == 3 else nn.ConvTranspose2d
    return conv(in_ch, out_ch, kernel_size=tuple(stride), stride=tuple(stride), bias=False)


def head(ndim: int, in_ch: int, num_classes: int) -> nn.Module:
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(in_ch, num_classes, kernel_size=1, bias=True)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal for convolutions (LeakyReLU slope 0.01), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if m.weight.is_meta:  # planner's memory count: no values to set (and normal_ on meta costs 3 s)
                continue
            nn.init.kaiming_normal_(m.weight, a=1e-2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
