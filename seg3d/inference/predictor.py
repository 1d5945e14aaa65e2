"""The Predictor: load a model folder once, predict many images in memory (numpy arrays or SimpleITK images).

Per case: preprocess exactly as in training (reorient to canonical, crop, resample, normalize), sliding
window x mirroring x folds, probabilities back to the input grid (un-resample, un-crop, un-reorient),
argmax, class index -> label value, connected-component post-processing where cross-validation accepted it.
The mask is in the input's own array order, so writing it with the input's Geometry gives its exact header.
"""
from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.core.device import resolve_device
from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry
from seg3d.model_dir import ModelInfo, available_folds, fold_dir
from seg3d.planning.plan import Plan


@dataclass
class Prediction:
    """The result of one case: label values in the input's array order, and optionally probabilities."""

    labels: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None = None  # (K, *input shape), class index order = label_values order
    timings: dict[str, float] = field(default_factory=dict)


def label_dtype(label_values) -> np.dtype:
    return np.dtype(np.uint8) if max(label_values) <= 255 else np.dtype(np.uint16)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint as a dict; a missing or damaged file is the user's problem, named."""
    import torch

    if not path.is_file():
        raise Seg3dError("checkpoint not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # written by seg3d's own trainer with extra Python objects: trusted, it is the user's model folder
        ckpt = _load_any(path)
    except (RuntimeError, EOFError, OSError) as e:
        raise Seg3dError(f"cannot read checkpoint ({e}); was training interrupted?", path) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise Seg3dError("not a seg3d checkpoint (no 'model' entry)", path)
    return ckpt


def _load_any(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise Seg3dError(f"cannot read checkpoint ({type(e).__name__}: {e})", path) from None


class Predictor:
    """A model folder loaded once: its plan, configuration, one network per fold, post-processing rules.

    >>> p = Predictor("models/Dataset004", folds=[0])          # doctest: +SKIP
    >>> labels = p.predict_case(data, geometry)                # (C, z, y, x) float32 -> (z, y, x) uint8
    """

    def __init__(self, model_dir: str | Path, folds: str | list[int | str] = "all-available",
                 config: str | None = None, device: str = "auto", tta: bool = True, step: float = 0.5,
                 checkpoint: str = "final", postprocess: bool = True, precision: str = "auto",
                 threads: int | None = None):
        import torch

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise Seg3dError("model folder not found", self.model_dir)
        if not 0.0 < step <= 1.0:
            raise Seg3dError(f"step must be in (0, 1], got {step}")
        from seg3d.core.device import check_precision

        check_precision(precision)
        self.info = ModelInfo.load(self.model_dir)
        self.plan = Plan.load(self.model_dir / "plans.json")
        self.config_name = config or self.info.config
        self.config = self.plan.config(self.config_name)
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.tta, self.step, self.precision = tta, float(step), precision
        self.checkpoint = checkpoint
        self.folds = self._resolve_folds(folds)
        self.label_values = tuple(self.plan.label_values)
        self.networks = [self._load_network(f) for f in self.folds]
        self.postprocessing = self._load_postprocessing() if postprocess else None

    # --- loading -------------------------------------------------------------------------------------
    def _resolve_folds(self, folds) -> list[str]:
        have = available_folds(self.model_dir, self.checkpoint)
        if folds in ("all-available", "all_available", None):
            if not have:
                raise Seg3dError(f"no fold has a checkpoint_{self.checkpoint}.pt (has training finished?)",
                                 self.model_dir)
            return have
        if isinstance(folds, (int, str)):
            folds = [folds]
        out = [str(f) for f in folds]
        missing = [f for f in out if f not in have]
        if missing:
            raise Seg3dError(f"fold(s) {', '.join(missing)} have no checkpoint_{self.checkpoint}.pt "
                             f"(available: {', '.join(have) or 'none'})", self.model_dir)
        return out

    def _load_network(self, fold: str):
        import torch

        from seg3d.nets import build_network

        path = fold_dir(self.model_dir, fold) / f"checkpoint_{self.checkpoint}.pt"
        ckpt = load_checkpoint(path)
        arch = ckpt.get("arch", self.info.arch)
        num_classes = int(ckpt.get("num_classes", self.plan.num_classes))
        if num_classes != self.plan.num_classes:
            raise Seg3dError(f"checkpoint predicts {num_classes} classes but the plan declares "
                             f"{self.plan.num_classes}", path)
        cfg_name = ckpt.get("config")
        if isinstance(cfg_name, str) and cfg_name != self.config_name:
            raise Seg3dError(f"checkpoint was trained for configuration '{cfg_name}', not "
                             f"'{self.config_name}'", path)
        net = build_network(self.config, self.plan.num_channels, num_classes, arch=arch,
                            deep_supervision=self.info.deep_supervision)
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise Seg3dError(f"weights do not fit the network the plan describes ({str(e).splitlines()[0]})",
                             path) from None
        net.eval().to(self.device)
        if self.device.type == "cuda":
            net.to(memory_format=torch.channels_last_3d if self.config.ndim == 3 else torch.channels_last)
        return net

    def _load_postprocessing(self):
        from seg3d.postprocessing import PostprocessingRule

        path = self.model_dir / "postprocessing.json"
        return PostprocessingRule.load(path) if path.is_file() else None

    # --- prediction ----------------------------------------------------------------------------------
    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return tuple(self.config.mirror_axes) if self.tta else ()

    def settings(self) -> dict[str, Any]:
        """What a run manifest records about this predictor."""
        return {"model_dir": str(self.model_dir.resolve()), "config": self.config_name, "folds": self.folds,
                "checkpoint": self.checkpoint, "device": str(self.device), "tta": self.tta,
                "mirror_axes": list(self.mirror_axes), "step": self.step, "precision": self.precision,
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
        if not np.isfinite(data).all():
            raise Seg3dError("image contains NaN or infinite values", where)
        return data

    def preprocess(self, data: np.ndarray, geometry: Geometry, where=None):
        """Input -> (network input (C, *shape) float32, CaseProperties to go back)."""
        from seg3d.preprocessing import preprocess_case

        data = self.check_input(data, geometry, where)
        pdata, _, props = preprocess_case(data, geometry, self.plan, self.config)
        return pdata, props

    def predict_preprocessed(self, pdata: np.ndarray):
        """Mean softmax over folds and mirrorings, ``(K, *shape)`` on the device."""
        from seg3d.inference.sliding_window import sliding_window_predict

        patch = self.config.patch_size
        return sliding_window_predict(self.networks, pdata, patch, self.step, self.mirror_axes, self.device,
                                      num_classes=self.plan.num_classes, slice_axis=self.config.slice_axis,
                                      precision=self.precision)

    def export(self, probs, props, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities on the preprocessed grid -> label values (and probabilities) on the input grid."""
        from seg3d.preprocessing import revert_to_original

        idx = revert_to_original(probs, props, self.plan, self.config, out="labels")
        lut = np.asarray(self.label_values, dtype=label_dtype(self.label_values))
        labels = lut[np.asarray(idx)]
        if self.postprocessing is not None:
            labels = self.postprocessing.apply(labels, props.geometry.spacing_zyx)
        p = None
        if probabilities:
            p = np.asarray(revert_to_original(probs, props, self.plan, self.config, out="probabilities"))
        return labels, p

    def predict_case(self, data, geometry: Geometry | None = None, return_probabilities: bool = False):
        """Labels (label values, the input's array order, uint8/uint16) for one image.

        ``data``: ``(C, z, y, x)`` float32 (or ``(z, y, x)`` for one channel) with its ``geometry``; or a
        SimpleITK image / list of images (one per channel). With ``return_probabilities`` a
        :class:`Prediction` is returned instead.
        """
        data, geometry = _as_array(data, geometry)
        t0 = time.perf_counter()
        pdata, props = self.preprocess(data, geometry)
        t1 = time.perf_counter()
        probs = self.predict_preprocessed(pdata)
        t2 = time.perf_counter()
        labels, p = self.export(probs, props, return_probabilities)
        t3 = time.perf_counter()
        if not return_probabilities:
            return labels
        return Prediction(labels, geometry, p, {"preprocess": t1 - t0, "network": t2 - t1, "export": t3 - t2})

    def predict_arrays(self, data, geometry: Geometry | None = None, return_probabilities: bool = False):
        """Alias of :meth:`predict_case` (the name the architecture document uses)."""
        return self.predict_case(data, geometry, return_probabilities)

    def predict_image(self, image):
        """SimpleITK image(s) in, SimpleITK label image out, carrying the input's exact geometry."""
        import SimpleITK as sitk

        labels = self.predict_case(image)
        out = sitk.GetImageFromArray(labels)
        first = image[0] if isinstance(image, (list, tuple)) else image
        out.CopyInformation(first)
        return out


def _as_array(data, geometry: Geometry | None):
    if isinstance(data, (list, tuple)) or type(data).__name__ == "Image" and hasattr(data, "GetSize"):
        import SimpleITK as sitk

        images = list(data) if isinstance(data, (list, tuple)) else [data]
        geo = Geometry.from_sitk(images[0])
        arrays = []
        for i, img in enumerate(images):
            if Geometry.from_sitk(img).mismatches(geo):
                raise Seg3dError(f"channel {i} is not on the same grid as channel 0")
            arrays.append(sitk.GetArrayFromImage(img).astype(np.float32, copy=False))
        return np.stack(arrays), geo
    if geometry is None:
        raise Seg3dError("a numpy array needs its Geometry (spacing, origin, direction)")
    return data, geometry
