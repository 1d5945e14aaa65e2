"""int8 networks for the OpenVINO backend: post-training quantization (NNCF) calibrated on training cases.

``seg3d predict --backend openvino --precision int8`` runs each fold's network quantized to int8 by
``nncf.quantize`` (NNCF's ``mixed`` preset: symmetric int8 weights per output channel, asymmetric activations),
with the first and the last convolution kept in float (the raw normalized intensities and the logits are the
tensors quantization hurts most); the operations left in float run in fp32. Measured (benchmarks/RESULTS.md,
"int8") on a hippocampus model, all 39 fold-0 validation cases, mirroring TTA, against torch fp32, AVX-512 CPU
with VNNI: 99.964% identical voxels (lowest case 99.927%), Dice -0.0004/+0.0001 (99.966% with another
calibration sample), network 2.32x OpenVINO fp32 and 1.28x OpenVINO bf16 (8.1x torch fp32; 2 threads; 1.89x and
1.07x in a noisier run; 1.61x OpenVINO fp32 with the CPU held to AVX2). That meets issue 12's goal for a lower
precision (>= 99.9%, Dice within 0.002). NNCF's default preset quantizing every convolution was slightly faster
(2.58x OpenVINO fp32) but agreed less (99.941%, lowest case 99.859%, Dice -0.0009).

Calibration: the windows seg3d's own sliding window feeds the network (preprocessing, window grid at step 0.5,
every mirroring of the plan's mirror axes) on up to :attr:`Calibration.cases` TRAINING cases of the fold
(``splits.json``, spread evenly over the list), read from the training dataset recorded in the model folder;
a uniform sample of :attr:`Calibration.windows` of them (fixed seed, bounded in memory) goes to NNCF. Collecting
them runs no network, only preprocessing. The fold's network is never calibrated on its validation cases.

Cache: the quantized network is saved beside the fp32 conversion it came from (same cache entry, so keyed by
the weights checksum and the OpenVINO version), in ``int8-<key>/`` where ``key`` hashes the fold's training case
ids and :class:`Calibration`. A cached int8 network needs neither NNCF nor the dataset.

Raises :class:`Seg3dError` (through :func:`int8_network`) when NNCF is missing, or the training dataset or
its cases cannot be found, or the model is a bundle (it has no training cases to calibrate on).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from seg3d.errors import Seg3dError
from seg3d.inference.backends import LoadedModel
from seg3d.inference.backends.openvino import CachedNetwork, save_network
from seg3d.progress import LogFn, log_info


@dataclass(frozen=True)
class Calibration:
    """How an int8 network is calibrated and quantized.

    Attributes:
        cases: training cases of the fold to draw windows from (at most; spread evenly over the list).
        windows: windows given to ``nncf.quantize`` (its ``subset_size``), drawn at random with ``seed``.
        step: window step of the calibration sliding window (fraction of the patch).
        preset: NNCF preset, ``performance`` (symmetric activations) or ``mixed`` (asymmetric).
        keep_ends: keep the first and the last convolution in float.
        seed: seed of the window draw.
    """

    cases: int = 20
    windows: int = 300
    step: float = 0.5
    preset: str = "mixed"
    keep_ends: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cases < 1 or self.windows < 1:
            raise ValueError(f"calibration needs >= 1 case and window, got {self.cases} and {self.windows}")
        if self.preset not in ("performance", "mixed"):
            raise ValueError(f"NNCF preset must be performance or mixed, got '{self.preset}'")


DEFAULT_CALIBRATION = Calibration()


def nncf_available() -> bool:
    """Whether NNCF can be imported (the ``openvino`` extra installs it)."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def require_nncf() -> None:
    """Raise a :class:`Seg3dError` saying how to install NNCF when it is missing."""
    if not nncf_available():
        raise Seg3dError("--precision int8 quantizes the network with NNCF, which is not installed: pip install "
                         "'seg3d[openvino]' (or nncf), or use --precision fp32/bf16/auto")


class RecordingCall:
    """A network call that keeps a uniform random sample of the windows it is given (reservoir sampling, at most
    ``keep`` of them, ``(1, C, *window)`` float32 each) and returns zero logits for ``num_classes`` classes:
    the sliding window then runs as in prediction without running any network (its output is not needed)."""

    def __init__(self, num_classes: int, keep: int, seed: int = 0):
        self.num_classes, self.keep = int(num_classes), int(keep)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.windows: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for w in x:
            slot = self.seen if self.seen < self.keep else int(self.rng.integers(0, self.seen + 1))
            if slot < self.keep:
                window = w[None].detach().to("cpu", torch.float32).numpy().copy()
                if slot == len(self.windows):
                    self.windows.append(window)
                else:
                    self.windows[slot] = window
            self.seen += 1
        return torch.zeros((x.shape[0], self.num_classes, *x.shape[2:]), dtype=torch.float32)


def spread(ids: Sequence[str], n: int) -> list[str]:
    """``n`` of ``ids`` spread evenly over the list (all of them when there are at most ``n``)."""
    if len(ids) <= n:
        return list(ids)
    return [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, n).round().astype(int))]


# How calibration windows are drawn (part of the cache key: a change here must not reuse old int8 networks)
SAMPLING = "reservoir-1"
# Calibration windows held in memory at once, at most (a CT-sized 128^3 window is 8 MB: 128 of them)
CALIBRATION_BYTES = 1 << 30


def calibration_windows(model: LoadedModel, cases, calib: Calibration) -> list[np.ndarray]:
    """A uniform random sample (``calib.seed``) of the windows ``seg3d predict`` feeds the network for ``cases``
    (:class:`seg3d.io.layout.Case`: preprocessing, sliding window at ``calib.step``, every mirroring of the
    plan's mirror axes): ``(1, C, *patch)`` float32 each (``(1, C, h, w)`` for a 2D configuration), at most
    ``calib.windows`` and :data:`CALIBRATION_BYTES` of them. No network runs: only the inputs are collected."""
    from seg3d.inference.sliding_window import sliding_window_predict
    from seg3d.io.layout import read_case_images
    from seg3d.preprocessing import preprocess_case

    window_bytes = 4 * model.plan.num_channels * int(np.prod(model.config.patch_size))
    rec = RecordingCall(model.plan.num_classes, max(1, min(calib.windows, CALIBRATION_BYTES // window_bytes)),
                        calib.seed)
    for case in cases:
        data, geometry = read_case_images(case, model.plan.num_channels)
        pdata, _, _ = preprocess_case(data, geometry, model.plan, model.config)
        sliding_window_predict([rec], pdata, model.config.patch_size, calib.step, model.config.mirror_axes,
                               "cpu", slice_axis=model.config.slice_axis)
    return rec.windows


def end_convolutions(ov_model) -> list[str]:
    """Names of the first and the last convolution of an ``openvino.Model``, in graph order."""
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return [convs[0], convs[-1]] if convs else []


def quantize(ov_model, windows: list[np.ndarray], calib: Calibration, fast_bias_correction: bool = True):
    """``nncf.quantize`` of an fp32 ``openvino.Model`` calibrated on ``windows`` (every one of them) -> int8
    ``openvino.Model`` (inputs and outputs unchanged: float32 windows in, float32 logits out)."""
    require_nncf()
    import nncf

    kwargs = {"subset_size": len(windows), "fast_bias_correction": fast_bias_correction,
              "preset": nncf.QuantizationPreset.MIXED if calib.preset == "mixed"
              else nncf.QuantizationPreset.PERFORMANCE}
    if calib.keep_ends:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=end_convolutions(ov_model))
    return nncf.quantize(ov_model, nncf.Dataset(windows), **kwargs)


def int8_key(train_ids: Sequence[str] | None, calib: Calibration) -> str:
    """The cache key of one quantization: the fold's training cases (``None``: fold ``all``) and the settings;
    computed from the model folder alone, so a cached int8 network is found without NNCF or the dataset."""
    blob = json.dumps({"train": "all" if train_ids is None else list(train_ids), "sampling": SAMPLING,
                       **asdict(calib)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_or_quantize(entry: CachedNetwork, key: str, windows: Callable[[], list[np.ndarray]],
                     calib: Calibration = DEFAULT_CALIBRATION, *, log: LogFn = log_info,
                     what: str = "the network") -> CachedNetwork:
    """The int8 network of the fp32 conversion ``entry`` in ``entry.folder/int8-<key>``: cached, or quantized
    now on ``windows()`` and saved there (temporary folder, then rename). A quantization (a minute or more) is
    announced through ``log`` (``what``: e.g. ``fold 0``) before, with its seconds after; a cache hit is silent.

    Raises:
        Seg3dError: NNCF is not installed, or the entry's folder cannot be written.
    """
    from seg3d.inference.backends.openvino import _core

    cached = CachedNetwork(entry.folder / f"int8-{key}", False)
    if cached.xml.is_file() and cached.xml.with_suffix(".bin").is_file():
        return cached
    require_nncf()
    log(f"quantizing {what} to int8 once (NNCF, calibrated on up to {calib.cases} training cases); cached in "
        f"{cached.folder}")
    t0 = time.perf_counter()
    q = quantize(_core().read_model(str(entry.xml)), windows(), calib)
    try:
        save_network(q, entry.folder, cached.folder.name)
    except OSError as e:
        raise Seg3dError(f"cannot write the int8 network ({e})", entry.folder) from None
    log(f"quantized {what} to int8 in {time.perf_counter() - t0:.1f} s")
    return CachedNetwork(cached.folder, True)


def dataset_cases(model: LoadedModel, case_ids: Sequence[str] | None) -> list:
    """The :class:`~seg3d.io.layout.Case` objects of ``case_ids`` (all cases when ``None``) in the training
    dataset recorded in the model folder.

    Raises:
        Seg3dError: no dataset recorded, the folder is gone, or a case is missing from it.
    """
    from seg3d.io.layout import load_dataset

    root = model.folder.dataset_dir()
    if root is None or not Path(root).is_dir():
        raise Seg3dError("--precision int8 calibrates on the fold's training cases, but the training dataset "
                         + ("is not recorded in model.json" if root is None else f"recorded in model.json "
                            f"({root}) is not there") + ": use --precision fp32/bf16/auto", model.folder.path)
    ds = load_dataset(root)
    by_id = {c.case_id: c for c in ds.cases}
    if case_ids is None:
        return list(ds.cases)
    missing = [c for c in case_ids if c not in by_id]
    if missing:
        raise Seg3dError(f"{len(missing)} training case(s) of the model are not in its dataset "
                         f"({', '.join(missing[:3])}): int8 cannot be calibrated", root)
    return [by_id[c] for c in case_ids]


def int8_network(model: LoadedModel, fold: str, entry: CachedNetwork,
                 calib: Calibration = DEFAULT_CALIBRATION) -> CachedNetwork:
    """The int8 network of ``fold`` (fp32 conversion ``entry``): cached, or quantized now on up to
    ``calib.cases`` of the fold's training cases (needs NNCF and the training dataset; a cached one needs
    neither).

    Raises:
        Seg3dError: nothing cached and NNCF or the dataset missing (:func:`dataset_cases`), no ``splits.json``.
    """
    train = model.folder.training_cases(fold)

    def windows() -> list[np.ndarray]:
        cases = dataset_cases(model, train)
        chosen = set(spread(sorted(c.case_id for c in cases), calib.cases))
        return calibration_windows(model, [c for c in cases if c.case_id in chosen], calib)

    return find_or_quantize(entry, int8_key(train, calib), windows, calib, log=model.log, what=f"fold {fold}")
