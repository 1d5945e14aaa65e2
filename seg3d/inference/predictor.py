"""The Predictor: load a model folder once, predict many images in memory (numpy arrays or SimpleITK images).

Per case: preprocess exactly as in training (reorient to canonical, crop, resample, normalize), sliding
window x mirroring x folds through the backend's network calls, probabilities back to the input grid
(un-resample, un-crop, un-reorient), argmax, class index -> label value, connected-component post-processing
where cross-validation accepted it. The mask is in the input's own array order, so writing it with the
input's Geometry gives its exact header.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.core.bundle import Bundle, is_bundle
from seg3d.core.device import resolve_device
from seg3d.core.folds import ALL_AVAILABLE
from seg3d.core.model_folder import ModelFolder
from seg3d.core.settings import PredictSettings, settings_from
from seg3d.errors import Seg3dError
from seg3d.inference.backends import BACKENDS, LoadedModel, backend_note, resolve_backend
from seg3d.inference.sliding_window import sliding_window_predict
from seg3d.io.image import Geometry
from seg3d.io.writers import OutputContext
from seg3d.postprocessing import PostprocessingRule
from seg3d.preprocessing import indices_to_labels, preprocess_case, revert_to_original
from seg3d.progress import LogFn, log_info

# SimpleITK imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast


@dataclass
class Prediction:
    """The result of one case: label values in the input's array order, and optionally probabilities."""

    labels: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None = None  # (K, *input shape), class index order = label_values order
    timings: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A model folder loaded once: its plan, configuration, one network call per fold, post-processing rules.

    Args:
        model_dir: a model folder written by ``seg3d train`` (or a :class:`ModelFolder`), or a bundle written
            by ``seg3d export`` (a :class:`~seg3d.core.bundle.Bundle`; run through OpenVINO, no checkpoints).
        settings: :class:`~seg3d.core.settings.PredictSettings`; keyword arguments replace its fields
            (``Predictor(m, folds=[0], tta=False)``). Only the model-level fields matter here (folds, config,
            checkpoint, device, precision, backend, tta, step, postprocess); the batch fields are the runner's.
        log: where loading reports (default: the ``seg3d`` logger), e.g. OpenVINO's one-time conversion of a
            fold (seconds to a minute), announced before it starts and timed after.

    Raises:
        Seg3dError: missing folder or fold, a checkpoint that does not fit the plan, a bad setting.

    >>> p = Predictor("models/Dataset004", folds=[0])          # doctest: +SKIP
    >>> mask = p.predict_case(sitk_image)                      # SimpleITK image -> SimpleITK image, same grid
    >>> labels = p.predict_case(data, geometry)                # (C, z, y, x) float32 -> (z, y, x) uint8
    """

    def __init__(self, model_dir: str | Path | ModelFolder | Bundle, settings: PredictSettings | None = None,
                 *, log: LogFn = log_info, **overrides: Any):
        self.settings = settings_from(PredictSettings, settings, overrides)
        s = self.settings
        model = load_model(model_dir, s, log)
        self.folder, self.model_dir = model.folder, model.folder.path
        self._context: OutputContext | None = None
        self.info, self.plan = model.info, model.plan
        self.config_name, self.config, self.device = model.config_name, model.config, model.device
        self.tta, self.step, self.precision, self.checkpoint = s.tta, s.step, s.precision, s.checkpoint
        self.folds = list(model.folds)
        self.label_values = tuple(self.plan.label_values)
        self.backend = resolve_backend(s.backend, model)
        self.backend_note = backend_note(s.backend, model)
        self.networks = BACKENDS[self.backend](model, s)
        self.postprocessing = self._load_postprocessing() if s.postprocess else None

    # --- loading -------------------------------------------------------------------------------------
    def _load_postprocessing(self):
        path = self.folder.postprocessing_json
        return PostprocessingRule.load(path) if path.is_file() else None

    # --- prediction ----------------------------------------------------------------------------------
    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return tuple(self.config.mirror_axes) if self.tta else ()

    def output_context(self) -> OutputContext:
        """Class names and the model's identity (weights checksum of the folds used), for writers and manifests."""
        if self._context is None:
            from seg3d import __version__

            try:
                checksum = self.folder.weights_checksum(self.folds, self.checkpoint)
            except (Seg3dError, OSError) as e:  # a model without plain checkpoint files (e.g. another runtime)
                checksum = f"unavailable ({e})"
            self._context = OutputContext(dict(self.plan.labels), f"{self.plan.dataset_name} {self.config_name}",
                                          checksum, __version__)
        return self._context

    def describe(self) -> dict[str, Any]:
        """What a run manifest records about this predictor."""
        return {"model_dir": str(self.model_dir.resolve()), "config": self.config_name, "folds": self.folds,
                "model_checksum": self.output_context().model_checksum,
                "checkpoint": self.checkpoint, "device": str(self.device), "tta": self.tta,
                "mirror_axes": list(self.mirror_axes), "step": self.step, "precision": self.precision,
                "backend": self.backend,
                "postprocessing": None if self.postprocessing is None else self.postprocessing.to_dict()}

    def check_input(self, data: np.ndarray, geometry: Geometry, where: str | Path | None = None) -> np.ndarray:
        """Channel count, shape and values against the plan; returns (C, z, y, x) float32."""
        data = np.asarray(data)
        if data.ndim == 3 and self.plan.num_channels == 1:
            data = data[None]
        if data.ndim != 4:
            raise Seg3dError(f"expected a 3D image (C, z, y, x), got an array of shape {data.shape}", where)
        if data.shape[0] != self.plan.num_channels:
            raise Seg3dError(f"{data.shape[0]} channel(s) given, the model expects {self.plan.num_channels} "
                             f"({', '.join(self.plan.channel_names)})", where)
        if geometry.dim != 3 or tuple(data.shape[1:]) != geometry.shape:
            raise Seg3dError(f"array shape {data.shape[1:]} does not match the geometry's {geometry.shape}",
                             where)
        sp = np.asarray(geometry.spacing, dtype=float)
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise Seg3dError(f"invalid voxel spacing {geometry.spacing}", where)
        data = data.astype(np.float32, copy=False)
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise Seg3dError(f"{bad} of {finite.size} voxel(s) are NaN or infinite", where)
        return data

    def preprocess(self, data: np.ndarray, geometry: Geometry, where=None):
        """Input -> (network input (C, *shape) float32, CaseProperties to go back)."""

        data = self.check_input(data, geometry, where)
        pdata, _, props = preprocess_case(data, geometry, self.plan, self.config)
        return pdata, props

    def predict_preprocessed(self, pdata: np.ndarray):
        """Mean softmax over folds and mirrorings, ``(K, *shape)`` on the device.

        Network calls with a ``release()`` method (OpenVINO's) free their per-call buffers afterwards, so the
        revert that follows does not stack on them."""

        probs = sliding_window_predict(self.networks, pdata, self.config.patch_size, self.step, self.mirror_axes,
                                       self.device, num_classes=self.plan.num_classes,
                                       slice_axis=self.config.slice_axis)
        for net in self.networks:
            release = getattr(net, "release", None)
            if callable(release):
                release()
        return probs

    def export(self, probs, props, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities on the preprocessed grid -> label values (and probabilities) on the input grid."""

        idx = revert_to_original(probs, props, self.plan, self.config, out="labels")
        labels = indices_to_labels(idx, self.label_values)
        if self.postprocessing is not None:
            labels = self.postprocessing.apply(labels, props.geometry.spacing_zyx)
        p = None
        if probabilities:
            p = np.asarray(revert_to_original(probs, props, self.plan, self.config, out="probabilities"))
        return labels, p

    def predict_case(self, data, geometry: Geometry | None = None, return_probabilities: bool = False):
        """Segment one image.

        * A SimpleITK image (or a list of them, one per channel) -> a SimpleITK label image on the same grid
          (size, spacing, origin, direction copied from the input).
        * An array ``(C, z, y, x)`` float32 (or ``(z, y, x)`` for one channel) with its ``geometry`` -> the
          label array ``(z, y, x)`` (label values, uint8/uint16, the input's array order).

        With ``return_probabilities`` a :class:`Prediction` (label array, geometry, probabilities
        ``(K, z, y, x)``, timings) is returned for either input.

        Raises:
            Seg3dError: wrong channel count, shape, spacing, NaN/Inf values, channels on different grids.
        """
        images = _sitk_images(data)
        if images is not None:
            data, geometry = _stack_images(images)
        elif geometry is None:
            raise Seg3dError("a numpy array needs its Geometry (spacing, origin, direction)")
        t0 = time.perf_counter()
        pdata, props = self.preprocess(data, geometry)
        t1 = time.perf_counter()
        probs = self.predict_preprocessed(pdata)
        t2 = time.perf_counter()
        labels, p = self.export(probs, props, return_probabilities)
        t3 = time.perf_counter()
        if return_probabilities:
            return Prediction(labels, geometry, p, {"preprocess": t1 - t0, "network": t2 - t1, "export": t3 - t2})
        if images is None:
            return labels
        import SimpleITK as sitk

        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(images[0])
        return out


def _sitk_images(data) -> list | None:
    """The SimpleITK images ``data`` holds (one, or a list per channel), ``None`` for an array."""
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    if items and all(type(i).__name__ == "Image" and hasattr(i, "GetSize") for i in items):
        return items
    return None


def _stack_images(images: list) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    geo = Geometry.from_sitk(images[0])
    arrays = []
    for i, img in enumerate(images):
        if Geometry.from_sitk(img).mismatches(geo):
            raise Seg3dError(f"channel {i} is not on the same grid as channel 0")
        arrays.append(sitk.GetArrayFromImage(img).astype(np.float32, copy=False))
    return np.stack(arrays), geo


def open_model_folder(path: str | Path | ModelFolder | Bundle) -> ModelFolder | Bundle:
    """A model folder, or a bundle when ``path`` holds ``bundle.json`` (checked: files and checksums)."""
    if isinstance(path, (ModelFolder, Bundle)):
        return path.require()
    return Bundle(path).require() if is_bundle(path) else ModelFolder(path).require()


def load_model(model_dir: str | Path | ModelFolder | Bundle, settings: PredictSettings,
               log: LogFn = log_info):
    """What a backend needs (:class:`~seg3d.inference.backends.LoadedModel`): plan, configuration, the folds
    ``settings`` choose, the device, where the backend reports (``log``); no network is loaded yet.

    Raises:
        Seg3dError: missing folder, plan or fold; a configuration the plan lacks; a bad device.
    """

    folder = open_model_folder(model_dir)
    info = folder.load_info()
    plan = folder.load_plan()
    config_name = settings.config or info.config
    folds = _resolve_folds(folder, settings.folds, settings.checkpoint)
    return LoadedModel(folder, plan, info, config_name, plan.config(config_name), tuple(folds),
                       resolve_device(settings.device), log)


def _resolve_folds(folder: ModelFolder | Bundle, folds, checkpoint: str) -> list[str]:
    have = folder.available_folds(checkpoint)
    if folds == ALL_AVAILABLE:
        if not have:
            raise Seg3dError(f"no fold has a checkpoint_{checkpoint}.pt (has training finished?)", folder.path)
        return have
    out = list(folds)
    missing = [f for f in out if f not in have]
    if missing:
        what = "are not in the bundle" if isinstance(folder, Bundle) else f"have no checkpoint_{checkpoint}.pt"
        raise Seg3dError(f"fold(s) {', '.join(missing)} {what} (available: {', '.join(have) or 'none'})",
                         folder.path)
    return out
