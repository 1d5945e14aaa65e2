"""Networks built from a plan configuration, by architecture name through a small registry.

``ARCHITECTURES`` maps a name to a factory ``factory(topology, in_channels, num_classes, deep_supervision)``
returning an ``nn.Module`` with the output contract of :class:`seg3d.nets.unet.UNet` (training mode with deep
supervision: a list of logits, full resolution first; otherwise the full-resolution logits). A new
architecture is one module in this package whose factory carries ``@register_architecture("name")``, listed
in :data:`_BUILTIN`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from seg3d.errors import Seg3dError

if TYPE_CHECKING:
    from torch import nn

    from seg3d.core.plan import Configuration, Topology

ArchitectureFactory = Callable[["Topology", int, int, bool], "nn.Module"]
ARCHITECTURES: dict[str, ArchitectureFactory] = {}
_BUILTIN = ("seg3d.nets.unet", "seg3d.nets.unetpp")  # modules that register the built-in architectures


def register_architecture(name: str):
    """Decorator registering ``factory(topology, in_channels, num_classes, deep_supervision)`` as ``name``."""
    def deco(factory: ArchitectureFactory) -> ArchitectureFactory:
        ARCHITECTURES[name] = factory
        return factory

    return deco


def architecture_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(ARCHITECTURES)


def build_network(config: Configuration, in_channels: int, num_classes: int, arch: str = "unet",
                  deep_supervision: bool = True) -> nn.Module:
    """The network ``arch`` for a configuration's topology.

    Raises:
        Seg3dError: an unknown architecture name (the message lists the registered ones).
    """
    _load_builtin()
    if arch not in ARCHITECTURES:
        raise Seg3dError(f"unknown architecture '{arch}' (choose from {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch](config.topology, in_channels, num_classes, deep_supervision)


def _load_builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)
