"""Networks built from a plan configuration."""
from __future__ import annotations

from torch import nn

from seg3d.planning.plan import Configuration

ARCHITECTURES = ("unet", "unetpp")


def build_network(config: Configuration, in_channels: int, num_classes: int, arch: str = "unet",
                  deep_supervision: bool = True) -> nn.Module:
    """The network a configuration describes. ``arch``: ``unet`` or ``unetpp`` (UNet++)."""
    if arch == "unet":
        from seg3d.nets.unet import UNet

        return UNet(config.topology, in_channels, num_classes, deep_supervision)
    if arch == "unetpp":
        from seg3d.nets.unetpp import UNetPlusPlus

        return UNetPlusPlus(config.topology, in_channels, num_classes, deep_supervision)
    from seg3d.errors import Seg3dError

    raise Seg3dError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")
