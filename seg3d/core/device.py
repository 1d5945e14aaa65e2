"""The compute device, the autocast precision and the CPU thread count: chosen in one place.

Training and inference both call these (the trainer no longer borrows them from the predictor). Nothing here
changes process-wide state except :func:`set_threads`, which the CLI calls explicitly.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from seg3d.errors import Seg3dError

if TYPE_CHECKING:  # torch is imported inside the functions: `seg3d --help` and `seg3d check` stay fast
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Prediction also offers int8: an NNCF-quantized network, run by the OpenVINO backend only
# (seg3d.inference.backends.openvino_int8).
PREDICT_PRECISIONS = PRECISIONS + ("int8",)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda[:N]``.

    Raises:
        Seg3dError: CUDA asked for but absent, or an unknown name.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Seg3dError("--device cuda was requested but no CUDA GPU is available (use --device cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise Seg3dError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)


def check_precision(name: str, allowed: tuple[str, ...] = PRECISIONS) -> None:
    """A precision name the user gave, checked before any work (``allowed``: :data:`PRECISIONS` for training,
    :data:`PREDICT_PRECISIONS` for prediction).

    Raises:
        Seg3dError: not one of ``allowed``.
    """
    if name not in allowed:
        raise Seg3dError(f"precision must be one of {', '.join(allowed)}, got '{name}'")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to use (``None`` = float32).

    ``auto``: fp16 on CUDA; bf16 on CPUs whose oneDNN has native bf16 kernels, otherwise float32 (emulated
    bf16 convolutions are two orders of magnitude slower than float32, measured on AVX2-only CPUs).

    Raises:
        Seg3dError: an unknown name, or ``int8`` (a quantized network, which only the OpenVINO backend runs).
    """
    import torch

    if name == "int8":
        raise Seg3dError("--precision int8 runs an NNCF-quantized network through OpenVINO on the CPU: use "
                         "--backend openvino --device cpu (pip install 'seg3d[openvino]'), or fp32/bf16/auto")
    check_precision(name)
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def precision_warning(name: str, device: torch.device) -> str | None:
    """Why a requested precision is a bad idea on this device (``None`` when it is fine)."""
    if name == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        return ("bf16 was requested but this CPU has no native bf16 convolutions (no AVX512-BF16/AMX): "
                "PyTorch emulates them, measured 55-170x slower than fp32; 'auto' would use fp32 here")
    if name == "fp16" and device.type == "cpu":
        return "fp16 on the CPU has no fast convolutions; use auto (bf16 where supported, else fp32)"
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """How logs name an autocast dtype: ``fp32``, ``bf16 autocast``, ``fp16 AMP``."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 AMP"}[dtype]


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def set_threads(n: int | None, share: int = 1) -> int:
    """Set torch's intra-op threads: ``n``, or the available cores divided by ``share`` (e.g. DDP ranks).

    Process-wide, so the CLI calls it once per command; library constructors never do. Returns the count set.

    Raises:
        Seg3dError: ``n`` < 1.
    """
    import torch

    if n is not None and n < 1:
        raise Seg3dError(f"--threads must be >= 1, got {n}")
    count = n if n is not None else max(1, available_cores() // max(1, share))
    torch.set_num_threads(count)
    return count
