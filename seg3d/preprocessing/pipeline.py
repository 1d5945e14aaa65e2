"""One case in, one case out: the preprocessing shared by training and inference, and its exact inverse.

Forward: reorient to canonical -> crop to nonzero -> labels to class indices -> normalise -> resample.
Back (``revert_to_original``): resample probabilities to the cropped grid slab by slab, argmax per slab
(for labels, only the classes that can win in each source cell are interpolated: :mod:`.argmax_resample`),
un-crop (class 0 outside), invert the reorientation -> the input's own array order and header.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry, Reorientation
from seg3d.preprocessing.argmax_resample import argmax_slabs
from seg3d.preprocessing.crop import crop_to_nonzero
from seg3d.preprocessing.normalize import normalize
from seg3d.preprocessing.resample import (
    anisotropic_axis,
    axis_modes,
    resample_image,
    resample_labels,
    resample_rows,
    target_shape,
)

# torch imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

SLAB_BYTES = 256 * 2**20  # working memory per slab when reverting (float32 probabilities)


@dataclass(frozen=True)
class CaseProperties:
    """Everything needed to go back from the preprocessed grid to the input grid."""

    geometry: Geometry  # the input's own geometry (written back verbatim)
    reorientation: Reorientation
    bbox: tuple[tuple[int, int], ...]  # crop in canonical array order
    shape_canonical: tuple[int, ...]  # before crop
    shape_after_crop: tuple[int, ...]
    shape_after_resample: tuple[int, ...]
    spacing_canonical: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"geometry": self.geometry.to_dict(), "reorientation": self.reorientation.to_dict(),
                "bbox": [list(b) for b in self.bbox], "shape_canonical": list(self.shape_canonical),
                "shape_after_crop": list(self.shape_after_crop),
                "shape_after_resample": list(self.shape_after_resample),
                "spacing_canonical": list(self.spacing_canonical)}

    @classmethod
    def from_dict(cls, d: dict) -> CaseProperties:
        return cls(Geometry.from_dict(d["geometry"]), Reorientation.from_dict(d["reorientation"]),
                   tuple((int(a), int(b)) for a, b in d["bbox"]), tuple(int(v) for v in d["shape_canonical"]),
                   tuple(int(v) for v in d["shape_after_crop"]), tuple(int(v) for v in d["shape_after_resample"]),
                   tuple(float(v) for v in d["spacing_canonical"]))


def target_spacing(config, spacing_canonical) -> tuple[float, ...]:
    """The configuration's spacing for all three axes; a 2D configuration keeps the slice axis as it is."""
    sp = tuple(float(v) for v in config.spacing)
    if len(sp) == len(spacing_canonical):
        return sp
    axis = config.slice_axis if config.slice_axis is not None else 0
    full = list(sp)
    full.insert(axis, float(spacing_canonical[axis]))
    return tuple(full)


def resampling_axis(config, spacing_canonical) -> int | None:
    """The axis resampled with nearest neighbour (none for 2D: only the in-plane axes are resampled)."""
    if len(config.spacing) != len(spacing_canonical):
        return None
    return anisotropic_axis(spacing_canonical, target_spacing(config, spacing_canonical),
                            config.anisotropic_axis)


def labels_to_indices(seg: np.ndarray, label_values, case_id: str | None = None) -> np.ndarray:
    """Label values -> class indices (int16); undeclared or non-integer values are an error."""
    values = np.asarray(sorted(label_values))
    if seg.dtype.kind == "f":
        if not np.all(np.isfinite(seg)) or np.any(seg != np.round(seg)):
            raise Seg3dError("the label map holds non-integer values", case_id)
        seg = seg.astype(np.int64)
    present = np.unique(seg)
    bad = np.setdiff1d(present, values)
    if bad.size:
        raise Seg3dError(f"label value(s) {bad.tolist()} are not declared in dataset.json "
                         f"(declared: {values.tolist()})", case_id)
    if np.array_equal(values, np.arange(len(values))):
        return seg.astype(np.int16, copy=False)
    lut = np.zeros(int(values.max()) + 1, dtype=np.int16)
    lut[values] = np.arange(len(values), dtype=np.int16)
    return lut[seg]


def indices_to_labels(indices: np.ndarray, label_values) -> np.ndarray:
    """Class indices -> label values (uint8, or uint16 when a value exceeds 255)."""
    values = np.asarray(sorted(label_values))
    dtype = np.uint8 if values.max() <= 255 else np.uint16
    return values.astype(dtype)[np.asarray(indices)]


def preprocess_case(data: np.ndarray, geometry: Geometry, plan, config, seg: np.ndarray | None = None,
                    case_id: str | None = None):
    """``data`` (C, z, y, x) in the input's array order -> (float32 (C, *shape), int16 (1, *shape) | None,
    CaseProperties). ``case_id`` only names the case in error messages."""
    data = np.asarray(data)
    if data.ndim == geometry.dim:
        data = data[None]
    if seg is not None:
        seg = np.asarray(seg)
        if seg.ndim == geometry.dim + 1:
            seg = seg[0]
        if seg.shape != data.shape[1:]:
            raise Seg3dError(f"label shape {seg.shape} differs from image shape {data.shape[1:]}", case_id)
    reo = Reorientation.to_canonical(geometry)
    data = reo.apply(data, channel_first=True)
    spacing = reo.geometry(geometry).spacing_zyx
    shape_canonical = tuple(int(v) for v in data.shape[1:])
    if seg is not None:
        seg = labels_to_indices(reo.apply(seg), plan.label_values, case_id)
    data, seg, bbox, mask = crop_to_nonzero(data, seg)
    shape_crop = tuple(int(v) for v in data.shape[1:])
    data = normalize(data, plan.normalization, mask)
    new_shape = target_shape(shape_crop, spacing, target_spacing(config, spacing))
    aniso = resampling_axis(config, spacing)
    data = resample_image(data, new_shape, aniso)
    if seg is not None:
        seg = resample_labels(seg, new_shape, aniso)[None]
    props = CaseProperties(geometry=geometry, reorientation=reo, bbox=tuple(bbox),
                           shape_canonical=shape_canonical, shape_after_crop=shape_crop,
                           shape_after_resample=tuple(int(v) for v in new_shape),
                           spacing_canonical=tuple(float(v) for v in spacing))
    return data, seg, props


def _slabs(probs, props: CaseProperties, aniso: int | None, slab_bytes: int):
    """Yield ``(start, stop, probs on the cropped grid for rows [start, stop) of axis 0)`` as float32."""
    dst = props.shape_after_crop
    modes = axis_modes(len(dst), aniso)
    k = probs.shape[0]
    row = 3 * k * int(np.prod(dst[1:])) * 4  # output rows plus the two interpolation operands
    n = max(1, slab_bytes // max(row, 1))
    for start in range(0, dst[0], n):
        stop = min(dst[0], start + n)
        yield start, stop, resample_rows(probs, dst, modes, start, stop)


def revert_to_original(probs, props: CaseProperties, plan, config, out: str = "labels",
                       probs_dtype=np.float16, slab_bytes: int = SLAB_BYTES) -> np.ndarray:
    """Probabilities ``(K, *shape_after_resample)`` (torch, any device) -> the input grid.

    ``out="labels"``: class indices (uint8, uint16 when K > 255) in the input's array order.
    ``out="probs"``: ``(K, *input shape)`` probabilities in ``probs_dtype`` (only when a user asks).
    Works slab by slab along canonical axis 0, so memory is bounded by ``slab_bytes`` plus the outputs.
    """
    import torch

    if out not in ("labels", "probs", "probabilities"):
        raise ValueError(f"out must be 'labels' or 'probs', not {out!r}")
    probs = torch.as_tensor(probs)
    k = int(probs.shape[0])
    aniso = resampling_axis(config, props.spacing_canonical)
    b = props.bbox
    if out == "labels":
        dtype = np.uint8 if k <= 256 else np.uint16
        result = np.zeros(props.shape_canonical, dtype=dtype)
    else:
        result = np.zeros((k, *props.shape_canonical), dtype=probs_dtype)
        result[0] = 1
    inner = tuple(slice(lo, hi) for lo, hi in b[1:])
    if tuple(probs.shape[1:]) != tuple(props.shape_after_resample):
        raise Seg3dError(f"probabilities of shape {tuple(probs.shape[1:])} do not match the preprocessed "
                         f"shape {tuple(props.shape_after_resample)}")
    dst = props.shape_after_crop
    if out == "labels" and len(dst) == 3:
        for start, stop, idx in argmax_slabs(probs, dst, axis_modes(3, aniso), slab_bytes):
            rows = slice(b[0][0] + start, b[0][0] + stop)
            result[(rows, *inner)] = idx.cpu().numpy().astype(dtype)
        return np.ascontiguousarray(props.reorientation.invert(result))
    with torch.no_grad():
        for start, stop, x in _slabs(probs, props, aniso, slab_bytes):
            rows = slice(b[0][0] + start, b[0][0] + stop)
            if out == "labels":
                result[(rows, *inner)] = torch.argmax(x, dim=0).cpu().numpy().astype(dtype)
            else:
                result[(slice(None), rows, *inner)] = x.cpu().numpy().astype(probs_dtype)
    result = props.reorientation.invert(result, channel_first=(out != "labels"))
    return np.ascontiguousarray(result)
