"""Training-memory estimate measured on the real network, on PyTorch's meta device.

The planned network (``seg3d.nets.build_network``) is built on the meta device (shapes only: no memory, no
compute) in the planned precision, and one forward pass with a CE+Dice-like loss and one backward pass are
run there. Every tensor autograd saves for backward is counted once per storage (views and tensors saved by
several nodes share one storage). Saved bytes are exactly linear in the batch size, so the pass runs at
batch 1 and is cached per (topology, patch, precision, ...). To these activations the estimate adds the
fp32 parameters, their gradients and the optimizer state (SGD momentum: 1 buffer, AdamW: 2) and the input
and target batch, then multiplies by :data:`SAFETY_FACTOR` and, on a GPU, adds the CUDA context.

:data:`SAFETY_FACTOR` covers what autograd's saved tensors miss: gradient buffers alive during backward,
convolution workspaces, allocator fragmentation. It was measured against a real training step on the CPU
(peak resident memory of a fresh process, see ``tests/planning/test_memory.py``, which keeps checking it).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from seg3d.core.plan import Configuration, Topology

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
OPTIMIZER_BUFFERS = {"sgd": 1, "adamw": 2}
SAFETY_FACTOR = 1.5  # measured: real CPU peak / counted bytes was 1.33-1.51 (fp32), see module docstring
GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryEstimate:
    activation_bytes: int  # saved for backward, whole batch
    parameter_bytes: int  # parameters + gradients + optimizer state (fp32)
    batch_bytes: int  # input (fp32) + target (int64)
    overhead_bytes: int  # device context (CUDA), not scaled by the safety factor
    safety_factor: float

    @property
    def counted_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes + self.batch_bytes

    @property
    def total_bytes(self) -> int:
        return int(self.counted_bytes * self.safety_factor) + self.overhead_bytes

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GIB


def estimate_training_memory(topology: Topology, patch: tuple[int, ...], batch_size: int, in_channels: int,
                             num_classes: int, precision: str = "fp16", optimizer: str = "sgd",
                             arch: str = "unet", overhead_gb: float = 0.0, device: str = "cuda",
                             safety_factor: float = SAFETY_FACTOR) -> MemoryEstimate:
    """Estimated peak memory of one training step (forward, backward, optimizer step).

    ``device="cpu"`` with bf16: CPU autocast runs InstanceNorm and the activations after it in fp32 and keeps
    the bf16 copies the convolutions need as well (measured: more memory than plain fp32), so both are counted.
    """
    patch = tuple(int(p) for p in patch)
    act, n_params = _per_sample(topology, patch, in_channels, num_classes, precision, arch)
    if device == "cpu" and precision != "fp32":
        act += _per_sample(topology, patch, in_channels, num_classes, "fp32", arch)[0]
    voxels = math.prod(patch)
    return MemoryEstimate(
        activation_bytes=act * batch_size,
        parameter_bytes=n_params * 4 * (2 + OPTIMIZER_BUFFERS[optimizer]),
        batch_bytes=batch_size * voxels * (4 * in_channels + 8),
        overhead_bytes=int(overhead_gb * GIB), safety_factor=safety_factor)


@functools.lru_cache(maxsize=4096)
def _per_sample(topology: Topology, patch: tuple[int, ...], in_channels: int, num_classes: int,
                precision: str, arch: str) -> tuple[int, int]:
    """(bytes saved for backward at batch 1, number of parameters), from a meta-device pass."""
    import torch

    from seg3d.nets import build_network

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    net = _meta_network(topology, len(patch), in_channels, num_classes, arch).to(dtype)
    n_params = sum(p.numel() for p in net.parameters())
    # In half precision the weights saved for backward are autocast's half copies (real extra memory);
    # in fp32 they are the parameters themselves, counted separately.
    skip = set() if precision != "fp32" else {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in skip:
            saved[s._cdata] = max(saved.get(s._cdata, 0), s.nbytes())
        return t

    x = torch.empty((1, in_channels, *patch), device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = net(x)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        # the loss works in fp32: log-softmax (CE) and softmax (Dice) of every deep-supervision output
        loss = sum(torch.log_softmax(o.float(), 1).mean() + torch.softmax(o.float(), 1).mean() for o in outs)
    loss.backward()
    del build_network
    return sum(saved.values()), n_params


@functools.lru_cache(maxsize=64)
def _meta_network(topology: Topology, ndim: int, in_channels: int, num_classes: int, arch: str):
    import torch

    from seg3d.nets import build_network

    cfg = Configuration(name="3d_fullres" if ndim == 3 else "2d", spacing=(1.0,) * ndim, patch_size=(8,) * ndim,
                        batch_size=1, topology=topology, median_shape=(8,) * ndim, estimated_memory_gb=0.0)
    with torch.device("meta"):
        net = build_network(cfg, in_channels, num_classes, arch=arch, deep_supervision=True)
    return net.train()


def warm_up() -> None:
    """Pay the estimate's one-time costs (importing torch and MONAI, and torch._dynamo, which the meta
    device's Python decompositions of InstanceNorm import on first use: ~8 s together on a slow CPU) with a
    tiny network, e.g. in a thread while the dataset is fingerprinted by worker processes."""
    tiny = Topology(((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (2, 4))
    estimate_training_memory(tiny, (8, 8, 8), 1, 1, 2, "fp16")
