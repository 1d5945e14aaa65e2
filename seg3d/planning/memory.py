"""Training-memory estimate of the planned network, counted from its structure.

What autograd saves for backward in one training step (forward with deep supervision, a CE+Dice-like loss in
fp32, backward) is counted per operation of the network the plan describes, in the planned precision, at batch
1 (saved bytes are exactly linear in the batch): each convolution keeps its input (and, in half precision, its
half weights), each InstanceNorm its input, its repeated weight and fp32 mean/inverse std, each in-place
LeakyReLU its output, each deep-supervision head its fp32 log-softmax and softmax. For the registered U-Net and
UNet++ this closed form (:data:`COUNTERS`) equals, byte for byte, the count of a real pass on PyTorch's meta
device (``tests/planning/test_memory.py`` compares them over random topologies), without importing torch or
MONAI: ``seg3d plan`` needs neither. Another registered architecture is measured on the meta device.

To the activations the estimate adds the fp32 parameters, their gradients and the optimizer state (SGD
momentum: 1 buffer, AdamW: 2) and the input and target batch, then multiplies by :data:`SAFETY_FACTOR` and, on
a GPU, adds the CUDA context. :data:`SAFETY_FACTOR` covers what autograd's saved tensors miss: gradient buffers
alive during backward, convolution workspaces, allocator fragmentation. It was measured against a real training
step on the CPU (peak resident memory of a fresh process, see ``tests/planning/test_memory.py``, which keeps
checking it).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
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
    """(bytes saved for backward at batch 1, number of parameters) of ``arch``."""
    if arch in COUNTERS:
        return COUNTERS[arch](topology, patch, in_channels, num_classes, precision)
    return measured_per_sample(topology, patch, in_channels, num_classes, precision, arch)


def known_architecture(arch: str) -> bool:
    """Whether ``arch`` can be estimated: a closed-form counter, else a name of the :mod:`seg3d.nets` registry
    (the registry is only imported, with torch, for names without a counter)."""
    if arch in COUNTERS:
        return True
    from seg3d.nets import architecture_names  # here only: the registry imports torch, planning does not

    return arch in architecture_names()


class _Saved:
    """Bytes autograd saves in one training step of a UNet-family network (see the module docstring)."""

    def __init__(self, ndim: int, precision: str):
        self.b = BYTES[precision]
        self.half = precision != "fp32"  # half weights are copies (counted); fp32 weights are the parameters
        self.ndim = ndim
        self.bytes = 0
        self.params = 0

    def conv(self, cin: int, cout: int, kernel: Sequence[int], saved_input: int = 0, bias: bool = False) -> None:
        """A convolution; ``saved_input``: elements of its input when no earlier operation saved them."""
        w = cout * cin * math.prod(kernel)
        self.params += w + (cout if bias else 0)
        self.bytes += (w if self.half else 0) * self.b + saved_input * self.b

    def stage(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], shape: tuple[int, ...],
              input_saved: bool) -> tuple[int, ...]:
        """Two conv-InstanceNorm-LeakyReLU (MONAI's UnetBasicBlock); returns the output shape."""
        out = tuple((n + 2 * ((k - s + 1) // 2) - k) // s + 1 for n, k, s in zip(shape, kernel, stride))
        voxels = math.prod(out)
        self.conv(cin, cout, kernel, 0 if input_saved else cin * math.prod(shape))
        self._norm(cout, voxels)
        self.conv(cout, cout, kernel)  # its input is the LeakyReLU output, saved already
        self._norm(cout, voxels)
        return out

    def _norm(self, c: int, voxels: int) -> None:
        # InstanceNorm: its input and repeated weight (dtype), mean and inverse std (fp32); the in-place
        # LeakyReLU after it: its output
        self.params += 2 * c
        self.bytes += 2 * c * voxels * self.b + c * self.b + 2 * c * 4

    def upsample(self, cin: int, cout: int, stride: Sequence[int]) -> None:
        """Transposed convolution (kernel = stride, no bias); its input is a stage output, saved already.
        Its output is concatenated with the skip; the next stage's first convolution saves the concatenation."""
        self.conv(cin, cout, stride)

    def head(self, cin: int, num_classes: int, voxels: int) -> None:
        """A 1x1 head (bias) and the loss on its output: fp32 log-softmax (CE) and softmax (Dice) results."""
        self.conv(cin, num_classes, (1,) * self.ndim, bias=True)
        self.bytes += 2 * num_classes * voxels * 4


def _encoder(c: _Saved, topology: Topology, patch: tuple[int, ...], in_channels: int) -> list[tuple[int, ...]]:
    shapes, shape, prev = [], patch, in_channels
    for i, feat in enumerate(topology.features):
        # the network input is saved by the first convolution; later inputs are saved LeakyReLU outputs
        shape = c.stage(prev, feat, topology.kernel_sizes[i], topology.strides[i], shape, input_saved=i > 0)
        shapes.append(shape)
        prev = feat
    return shapes


def _unet_count(topology: Topology, patch: tuple[int, ...], in_channels: int, num_classes: int,
                precision: str) -> tuple[int, int]:
    """:class:`seg3d.nets.unet.UNet` with deep supervision (a head per decoder level)."""
    c = _Saved(len(patch), precision)
    f, ones = topology.features, (1,) * len(patch)
    shapes = _encoder(c, topology, patch, in_channels)
    for i in range(topology.num_stages - 2, -1, -1):
        c.upsample(f[i + 1], f[i], topology.strides[i + 1])
        c.stage(2 * f[i], f[i], topology.kernel_sizes[i], ones, shapes[i], input_saved=False)
        c.head(f[i], num_classes, math.prod(shapes[i]))
    return c.bytes, c.params


def _unetpp_count(topology: Topology, patch: tuple[int, ...], in_channels: int, num_classes: int,
                  precision: str) -> tuple[int, int]:
    """:class:`seg3d.nets.unetpp.UNetPlusPlus` with deep supervision (its main and nested heads)."""
    c = _Saved(len(patch), precision)
    f, ones, depth = topology.features, (1,) * len(patch), topology.num_stages - 1
    shapes = _encoder(c, topology, patch, in_channels)
    for j in range(1, depth + 1):
        for i in range(depth + 1 - j):
            c.upsample(f[i + 1], f[i], topology.strides[i + 1])
            c.stage((j + 1) * f[i], f[i], topology.kernel_sizes[i], ones, shapes[i], input_saved=False)
    heads = [i for i in range(depth)] + [0] * (depth - 1)  # main heads X[i][L-i], then nested X[0][j]
    for i in heads:
        c.head(f[i], num_classes, math.prod(shapes[i]))
    return c.bytes, c.params


# closed-form counters by architecture name: (topology, patch, in_channels, num_classes, precision) ->
# (bytes saved at batch 1, parameters); equal to measured_per_sample for these networks (tested)
COUNTERS: dict[str, Callable[..., tuple[int, int]]] = {"unet": _unet_count, "unetpp": _unetpp_count}


@functools.lru_cache(maxsize=256)
def measured_per_sample(topology: Topology, patch: tuple[int, ...], in_channels: int, num_classes: int,
                precision: str, arch: str) -> tuple[int, int]:
    """(bytes saved for backward at batch 1, number of parameters), from a pass on the meta device: the
    reference of the closed-form counters, and the count of architectures without one."""
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
