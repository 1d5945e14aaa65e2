"""The network call: the one thing the sliding window needs from a model.

``NetworkCall = Callable[[Tensor], Tensor]``: a batch of windows ``(B, C, *patch)`` float32 on the compute
device -> logits ``(B, K, *patch)`` (any float dtype; deep-supervision lists already reduced to the full
resolution). A call with a true ``returns_probabilities`` attribute returns softmax probabilities instead
(OpenVINO with the softmax inside the network). The logits may live in a buffer the call's next call reuses (OpenVINO's output, not copied), so
a caller uses them before calling again, as the sliding window does. Any runtime fits: a torch module (:class:`TorchNetwork`, with autocast and memory format inside),
a compiled OpenVINO model, a distilled student. TTA, Gaussian blending, batching and fold averaging stay in
:func:`seg3d.inference.sliding_window.sliding_window_predict`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from seg3d.core.device import resolve_precision

NetworkCall = Callable[[torch.Tensor], torch.Tensor]


class TorchNetwork:
    """A torch module as a :data:`NetworkCall`: eval mode, no autograd, autocast, channels-last inputs.

    Args:
        module: the network; its training mode is restored after each call.
        device: the compute device (inputs arrive there).
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (:func:`seg3d.core.device.resolve_precision`).
        channels_last: channels-last inputs; ``None``: on CUDA or under autocast (faster there).
    """

    def __init__(self, module: nn.Module, device: torch.device | str = "cpu", precision: str = "auto",
                 channels_last: bool | None = None):
        self.module = module
        self.device = torch.device(device)
        self.amp = resolve_precision(precision, self.device)
        self.channels_last = (self.device.type == "cuda" or self.amp is not None) if channels_last is None \
            else bool(channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        training = self.module.training
        if training:
            self.module.eval()
        try:
            with torch.no_grad(), ctx:
                out = self.module(x)
        finally:
            if training:
                self.module.train()
        if isinstance(out, (list, tuple)):  # deep supervision left on: full resolution comes first
            out = out[0]
        return out


def as_network_calls(networks, device: torch.device | str = "cpu", precision: str = "auto",
                     channels_last: bool | None = None) -> list[NetworkCall]:
    """One network call or module, or a sequence of them, as a list of network calls (modules wrapped in
    :class:`TorchNetwork`)."""
    items: Sequence = [networks] if callable(networks) and not isinstance(networks, (list, tuple)) \
        else list(networks)
    return [TorchNetwork(n, device, precision, channels_last) if isinstance(n, nn.Module) else n for n in items]
