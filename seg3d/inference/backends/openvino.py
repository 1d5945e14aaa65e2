"""OpenVINO network calls: a seg3d network converted once, cached, and compiled for the CPU.

Only the network call goes through OpenVINO; preprocessing, the sliding window, Gaussian weighting, TTA,
fold averaging, the revert and post-processing stay seg3d's own. Why: PyTorch's CPU 3D convolutions are
most of a case's cost, and OpenVINO's CPU plugin runs the same network faster: measured 1.9-2.2x torch fp32
in fp32 and 3.1-5.6x in bf16 on an AVX-512/bf16 CPU, 2.9-3.4x in fp32 under AVX2 (benchmarks/RESULTS.md,
"Inference backends").

Conversion (``openvino.convert_model`` of the eval-mode torch module, traced on an example window, batch
and spatial dimensions dynamic) takes seconds to tens of seconds, so the converted network (OpenVINO IR:
``network.xml`` + ``network.bin``, fp32 weights) is cached. The cache folder's name holds the weights
checksum and the runtime version; inside it, OpenVINO's own compiled-model cache lives in one sub-folder
per precision and machine kind (``compiled-<precision>-<cpu kind>``). The cache goes in the model folder
(``openvino_cache/``, :meth:`ModelFolder.conversion_cache_dir`), or in the user's cache folder
(``~/.cache/seg3d/openvino``) when the model folder cannot be written. Both are content-addressed: a stale entry is never read, it is just never used again.

Precision: ``fp32`` sets OpenVINO's inference precision hint to f32 explicitly (its CPU plugin would
otherwise pick bf16 on CPUs that have it); ``bf16`` sets bf16 and is only offered where the CPU has native
bf16 (AVX512-BF16/AMX); ``auto`` is fp32 (:func:`resolve_precision`); ``int8`` runs the network quantized by
NNCF on the fold's training cases (:mod:`.openvino_int8`, cached in ``int8-<key>/`` inside the conversion's entry).
Threads are a compile property (``INFERENCE_NUM_THREADS``), never an environment variable.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from seg3d.errors import Seg3dError
from seg3d.inference.backends import LoadedModel, register_backend
from seg3d.progress import LogFn, log_info

NAME = "openvino"
IR_NAME = "network"
# OpenVINO's inference precision per seg3d precision; an int8 network's quantized convolutions run in int8
# whatever the hint, the operations left in float run in f32
_OV_TYPES = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def available() -> bool:
    """Whether the OpenVINO runtime can be imported (the ``openvino`` extra is installed)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def missing_message() -> str:
    return ("the OpenVINO runtime is not installed: pip install 'seg3d[openvino]' (or openvino), "
            "or use --backend torch")


def require() -> None:
    """Raise a :class:`Seg3dError` saying how to install OpenVINO when it is missing."""
    if not available():
        raise Seg3dError(missing_message())


def runtime_version() -> str:
    """OpenVINO's release, e.g. ``2026.4.1`` (the build suffix dropped)."""
    import openvino as ov

    return ov.__version__.split("-")[0]


@lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


def cpu_kind() -> str:
    """The machine kind a compiled network is specific to: ``avx512-bf16``, ``avx2``, ..."""
    from seg3d.core.device import cpu_has_fast_bf16

    cap = torch.backends.cpu.get_cpu_capability().lower()
    return f"{cap}-bf16" if cpu_has_fast_bf16() else cap


def resolve_precision(precision: str) -> str:
    """``auto|fp32|bf16|fp16|int8`` -> the precision OpenVINO runs in, ``fp32``, ``bf16`` or ``int8``.

    ``auto`` is fp32 through OpenVINO on every CPU (issue 12: "fp32 through OpenVINO by default"); bf16 is opt-in
    with ``--precision bf16`` where the CPU has it natively (measured 99.996% identical voxels to torch fp32 on
    hippocampus and about 1.5-1.8x faster than OpenVINO fp32 there, benchmarks/RESULTS.md). ``int8`` is opt-in
    on every CPU: the network post-training quantized by NNCF on the fold's training cases
    (:mod:`.openvino_int8`); measured on all 39 hippocampus validation cases against torch fp32: 99.964%
    identical voxels, Dice within 0.0004, 1.9-2.3x OpenVINO fp32 and 1.07-1.28x OpenVINO bf16 on an AVX-512/VNNI
    CPU, 1.6x OpenVINO fp32 with the same CPU held to AVX2 (benchmarks/RESULTS.md, "int8").

    Raises:
        Seg3dError: ``fp16`` (no fast fp16 convolutions on these CPUs), or ``bf16`` on a CPU without native
            bf16 (OpenVINO would silently run fp32, so the request cannot be honoured).
    """
    from seg3d.core.device import PREDICT_PRECISIONS, check_precision, cpu_has_fast_bf16

    check_precision(precision, PREDICT_PRECISIONS)
    if precision == "auto":
        return "fp32"
    if precision == "fp16":
        raise Seg3dError("--precision fp16 is not offered with --backend openvino on the CPU (use auto, fp32 "
                         "or bf16)")
    if precision == "bf16" and not cpu_has_fast_bf16():
        raise Seg3dError("--precision bf16 with --backend openvino needs a CPU with native bf16 "
                         f"(AVX512-BF16/AMX); this CPU is {cpu_kind()}: use fp32 or auto")
    return precision


def state_dict_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes), independent of the file they came from."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def convert_network(module: torch.nn.Module, in_channels: int, patch: Sequence[int]):
    """An ``openvino.Model`` of ``module`` in eval mode: input ``(?, C, ?, ...)`` float32 -> logits.

    The module is traced (TorchScript) on one zero window of ``patch``; batch and spatial dimensions are then
    declared dynamic, so one compiled network serves every window batch and window shape (checked against
    torch on other batch sizes and windows in tests/inference/test_openvino_backend.py). The tracer's own
    re-run check is skipped: it doubles the time and the tests do that check.
    """
    import openvino as ov

    module = module.eval()
    example = torch.zeros((1, int(in_channels), *(int(p) for p in patch)), dtype=torch.float32)
    shape = ov.PartialShape([-1, int(in_channels)] + [-1] * len(patch))
    with torch.no_grad(), warnings.catch_warnings():
        # Python-level shape checks in InstanceNorm are constants of the trace (the same for every window)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: what convert_model uses too
        traced = torch.jit.trace(module, example, check_trace=False)
        return ov.convert_model(traced, example_input=example, input=[shape])


def user_cache_dir() -> Path:
    """``~/.cache/seg3d/openvino``: where conversions go when the model folder is read-only."""
    return Path.home() / ".cache" / "seg3d" / NAME


def cache_entry_name(weights_checksum: str) -> str:
    """The cache folder of one network: weights checksum and runtime version."""
    return f"{weights_checksum[:20]}-openvino{runtime_version()}"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@dataclass(frozen=True)
class CachedNetwork:
    """Where one converted network lives: ``folder/network.xml`` (+ ``.bin``), and whether it was converted now."""

    folder: Path
    converted_now: bool

    @property
    def xml(self) -> Path:
        return self.folder / f"{IR_NAME}.xml"

    def compiled_cache(self, precision: str) -> Path:
        return self.folder / f"compiled-{precision}-{cpu_kind()}"


def find_or_convert(weights_checksum: str, build: Callable[[], torch.nn.Module], in_channels: int,
                    patch: Sequence[int], cache_roots: Sequence[Path], *, log: LogFn = log_info,
                    what: str = "the network") -> CachedNetwork:
    """The cached IR of a network, converting it (``build()`` gives the torch module) on a miss.

    ``cache_roots`` are tried in order: an existing entry in any of them is used; a new one is written in the
    first that can be written (temporary folder, then rename: a killed conversion leaves nothing behind).
    A conversion takes seconds to a minute, so it is announced through ``log`` (``what``: e.g. ``fold 0``)
    with the cache folder before, and its seconds after; a cache hit logs nothing.

    Raises:
        Seg3dError: none of ``cache_roots`` can be written.
    """
    name = cache_entry_name(weights_checksum)
    for root in cache_roots:
        entry = CachedNetwork(Path(root) / name, False)
        if entry.xml.is_file() and entry.xml.with_suffix(".bin").is_file():
            return entry
    root = next((Path(r) for r in cache_roots if _writable(Path(r))), None)
    if root is None:
        raise Seg3dError("cannot write the OpenVINO conversion cache in any of: "
                         + ", ".join(str(r) for r in cache_roots))
    log(f"converting {what} to OpenVINO IR once for this model; cached in {root / name}")
    t0 = time.perf_counter()
    save_network(convert_network(build(), in_channels, patch), root, name)
    log(f"converted {what} to OpenVINO IR in {time.perf_counter() - t0:.1f} s")
    return CachedNetwork(root / name, True)


def save_network(model, root: Path, name: str) -> Path:
    """Save an ``openvino.Model`` as ``root/name/network.xml`` (+ ``.bin``, weights as they are): written in a
    temporary folder, then renamed, so a killed process leaves nothing half-written. When another process
    saved the same entry first, theirs is kept. Returns ``root/name``.

    Raises:
        OSError: ``root`` cannot be written.
    """
    import openvino as ov

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        ov.save_model(model, str(tmp / f"{IR_NAME}.xml"), compress_to_fp16=False)
        try:
            os.rename(tmp, root / name)
        except OSError:  # another process finished the same entry first: use theirs
            if not (root / name / f"{IR_NAME}.xml").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / name


class OpenVinoNetwork:
    """A network call (seg3d's ``NetworkCall``) running a compiled OpenVINO network on the CPU.

    ``__call__(x)``: ``x`` ``(B, C, *window)`` float32 (any batch size and window shape) -> logits
    ``(B, K, *window)`` float32 on the CPU (softmax probabilities with ``softmax=True``, as the predictor uses
    it in fp32/int8). Not thread-safe (one inference request); one per thread.

    No copies: the input's memory is handed to OpenVINO as it is (``share_inputs``) and the logits are a view of
    the runtime's output buffer (``share_outputs``), which the next call overwrites: seg3d's sliding window turns
    each call's logits into probabilities before its next call. ``copy_output=True`` returns a copy the caller
    owns instead. Before, ``infer`` copied the outputs into its result and the call copied them again: two
    copies per pass, 124 MB each for 118 classes and a 64³ window, 495 MB each for a 64×128×128 window. A
    buffer of seg3d's set as the request's output (``set_output_tensor``) was measured slower on this CPU plugin
    with dynamic shapes (benchmarks/RESULTS.md, issue 12, "One network call").

    Args:
        model: an ``openvino.Model`` or the path of an IR (``.xml``) or ONNX file.
        precision: ``fp32``, ``bf16`` or ``int8`` (already resolved, see :func:`resolve_precision`; ``int8``:
            ``model`` is a quantized network, its float operations run in fp32).
        threads: inference threads (``None``: the CPUs this process may use).
        compiled_cache: folder for OpenVINO's compiled-model cache (``None``: none).
        copy_output: return logits the caller owns (a copy) rather than a view valid until the next call.
        window: the window shape ``(z, y, x)`` of every call when each call holds one window (batch 1),
            as seg3d's sliding window calls a network whose windows are too large to batch (``None``: any
            batch and window). The network is then compiled for that one static shape, for which OpenVINO
            plans its memory ahead: measured -0.32 GB peak for the CT-sized network's 64x128x128 window, and
            4% faster. A call of another shape compiles the dynamic network once and goes on with it.
        softmax: append a softmax over the classes to the network, so that the call returns probabilities
            (``returns_probabilities`` is then True and the sliding window skips its own softmax). Only in
            ``fp32``/``int8``, whose float operations run in f32; ``bf16`` would round the probabilities.
            Why: OpenVINO's softmax writes into the output buffer it reuses, where torch's allocates a
            probability map per pass (495 MB for 118 classes and a 64x128x128 window): measured -0.59 GB
            peak and 0.2 s less per window of the CT-sized network (benchmarks/RESULTS.md, large CT).

    Raises:
        ValueError: an unknown precision, or ``softmax`` with ``bf16``.
    """

    device = torch.device("cpu")

    def __init__(self, model, precision: str = "fp32", threads: int | None = None,
                 compiled_cache: Path | None = None, copy_output: bool = False, softmax: bool = False,
                 window: Sequence[int] | None = None):
        if precision not in _OV_TYPES:
            raise ValueError(f"OpenVINO precision must be fp32, bf16 or int8, got '{precision}'")
        if softmax and precision == "bf16":
            raise ValueError("softmax inside the network is only for fp32/int8 (bf16 would round the probabilities)")
        self.returns_probabilities = bool(softmax)
        self.precision = precision
        self.threads = int(threads or len(os.sched_getaffinity(0)))
        self.copy_output = bool(copy_output)
        self._source = model
        self._config = {"INFERENCE_PRECISION_HINT": _OV_TYPES[precision], "INFERENCE_NUM_THREADS": self.threads,
                        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if compiled_cache is not None and _writable(Path(compiled_cache)):
            self._config["CACHE_DIR"] = str(compiled_cache)
        self.static_shape: tuple[int, ...] | None = None
        self._compile(window)

    def _compile(self, window: Sequence[int] | None) -> None:
        """Compile the network: for batch-1 calls of ``window`` (static), or for any shape (``None``)."""
        model = self._source
        if isinstance(model, (str, Path)):
            model = _core().read_model(str(model))
        elif window is not None:
            model = model.clone()  # reshape works in place: keep the caller's (dynamic) model as it is
        if self.returns_probabilities:
            model = _with_softmax(model)
        self.static_shape = None
        channels = model.inputs[0].get_partial_shape()[1]
        if window is not None and channels.is_static:
            self.static_shape = (1, channels.get_length(), *(int(w) for w in window))
            model.reshape({model.inputs[0]: list(self.static_shape)})
        self.compiled = _core().compile_model(model, "CPU", self._config)
        self._request = self.compiled.create_infer_request()

    def release(self) -> None:
        """Drop the inference request and the buffers it holds (the output, 495 MB for 118 classes and a
        64x128x128 window) and the compiled network's intermediate memory (``release_memory``); the next call
        makes a new request and the runtime reallocates. The predictor calls this after each case's sliding
        window, so that the revert to the input grid does not stack on the runtime's buffers: the large CT's
        revert peaked at 2.05 GB instead of 3.15 GB (torch: 1.60 GB; its network stage 3.01 GB;
        benchmarks/RESULTS.md, large CT). Outputs returned earlier must not be used after it."""
        self._request = None
        self.compiled.release_memory()  # the compiled network's intermediate buffers, reallocated when needed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        if self.static_shape is not None and tuple(x.shape) != self.static_shape:
            self._compile(None)  # a shape it was not compiled for: the dynamic network from now on
        if self._request is None:
            self._request = self.compiled.create_infer_request()
        result = self._request.infer({0: x.numpy()}, share_inputs=True, share_outputs=True)
        out = torch.from_numpy(result[0])
        return out.clone() if self.copy_output else out


def single_window(patch: Sequence[int]) -> tuple[int, ...] | None:
    """The window shape when seg3d's sliding window passes one window per call on the CPU (a 3D patch larger
    than a forward pass's voxel budget, e.g. 64x128x128), else ``None`` (several windows per call)."""
    from seg3d.inference.sliding_window import windows_per_pass

    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or windows_per_pass(patch, torch.device("cpu")) != 1:
        return None
    return patch


def _with_softmax(model):
    """``model`` with a softmax over axis 1 (the classes) after its first output.

    The new nodes and output get fixed names: OpenVINO's compiled-model cache (``CACHE_DIR``) keys on the graph
    with its names, and the generated ones (``Softmax_<n>``) count the nodes the process made before (another
    fold, NNCF, a recompile), so the cache missed and grew by a blob each time."""
    import openvino as ov
    from openvino import opset13

    out = model.get_results()[0].input_value(0)
    probs = opset13.softmax(out, 1)
    probs.set_friendly_name("seg3d_softmax")
    model = ov.Model([probs.output(0)], model.get_parameters(), model.get_friendly_name())
    model.get_results()[0].set_friendly_name("seg3d_probabilities")
    model.outputs[0].get_tensor().set_names({"seg3d_probabilities"})
    return model


@register_backend(NAME)
def openvino_network_calls(model: LoadedModel, settings) -> list[OpenVinoNetwork]:
    """One compiled OpenVINO network per fold of ``model``, in ``settings.precision`` (:func:`resolve_precision`).

    A model folder's checkpoints are converted once (cached, see :func:`find_or_convert`; a conversion is
    announced through ``model.log``), and for ``int8`` quantized once on the fold's training cases (cached
    beside, announced too, :mod:`.openvino_int8`); a bundle's networks are read as they are. Threads: torch's
    intra-op count, which the CLI sets (``set_threads``).

    Raises:
        Seg3dError: OpenVINO missing, a non-CPU device, a precision OpenVINO cannot honour here; for ``int8``
            a bundle, or (nothing cached yet) NNCF or the training dataset missing.
    """
    from seg3d.core.bundle import Bundle

    require()
    if model.device.type != "cpu":
        raise Seg3dError(f"--backend openvino runs on the CPU, not on {model.device}: use --device cpu (or "
                         "--backend torch on a GPU)")
    precision = resolve_precision(settings.precision)
    threads = torch.get_num_threads()
    softmax = precision != "bf16"  # probabilities straight from the runtime's buffer (OpenVinoNetwork)
    window = single_window(model.config.patch_size)
    if isinstance(model.folder, Bundle):
        if precision == "int8":
            raise Seg3dError("--precision int8 quantizes a model folder's networks on its training cases; a bundle "
                             "has none: predict from the model folder, or use fp32/bf16/auto", model.folder.path)
        return [OpenVinoNetwork(model.folder.network_path(f), precision, threads, softmax=softmax, window=window)
                for f in model.folds]
    from seg3d.inference.backends.torch import load_fold_network

    roots = [model.folder.conversion_cache_dir(NAME), user_cache_dir()]
    calls = []
    for fold in model.folds:
        checksum = model.folder.weights_checksum([fold], settings.checkpoint)
        entry = find_or_convert(checksum, lambda f=fold: load_fold_network(model, f, settings.checkpoint),
                                model.plan.num_channels, model.config.patch_size, roots, log=model.log,
                                what=f"fold {fold}")
        if precision == "int8":
            from seg3d.inference.backends.openvino_int8 import int8_network

            entry = int8_network(model, fold, entry)
        calls.append(OpenVinoNetwork(entry.xml, precision, threads, entry.compiled_cache(precision),
                                     softmax=softmax, window=window))
    return calls
