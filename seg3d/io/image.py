"""Images with their geometry.

Conventions used everywhere in seg3d:

* Arrays are in numpy order as SimpleITK returns them: ``(z, y, x)`` for 3D, channels first when there are
  several: ``(C, z, y, x)``. Every spatial tuple in seg3d (spacing, patch size, shapes) is in this array
  order, which is also nnU-Net's order, so plans compare directly.
* :class:`Geometry` keeps SimpleITK's own order (``x, y, z``) because it is written back verbatim: an
  output mask gets exactly the input's size, spacing, origin and direction.
* Training and inference work on a *canonical* orientation (index axes aligned with the nearest world axes,
  pointing the positive way). :class:`Reorientation` maps an image there and back by axis permutation and
  flips only, so the round trip is exact: no interpolation, no lost voxel.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg3d.atomic import atomic_path
from seg3d.errors import Seg3dError
from seg3d.io.niigz import read_sitk

# SimpleITK imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a voxel grid, in SimpleITK order (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major dim x dim

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (z, y, x)."""
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(self.dim, self.dim)

    def mismatches(self, other: Geometry, rtol: float = 1e-3, atol_mm: float = 1e-3) -> list[str]:
        """Human-readable differences beyond a small tolerance (empty when the grids agree)."""
        out = []
        if self.size != other.size:
            out.append(f"size {other.size} != {self.size}")
            return out
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol_mm):
            out.append(f"spacing {_fmt(other.spacing)} != {_fmt(self.spacing)}")
        max_extent = max(s * n for s, n in zip(self.spacing, self.size))
        if not np.allclose(self.origin, other.origin, atol=max(atol_mm, rtol * max_extent)):
            out.append(f"origin {_fmt(other.origin)} != {_fmt(self.origin)}")
        if not np.allclose(self.direction, other.direction, atol=rtol):
            out.append(f"direction {_fmt(other.direction)} != {_fmt(self.direction)}")
        return out

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))

    @classmethod
    def from_sitk(cls, img) -> Geometry:
        return cls(tuple(int(v) for v in img.GetSize()), tuple(float(v) for v in img.GetSpacing()),
                   tuple(float(v) for v in img.GetOrigin()), tuple(float(v) for v in img.GetDirection()))

    def apply_to(self, img) -> None:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass
class Image:
    """A voxel array (numpy order) and the geometry it lives on."""

    array: np.ndarray
    geometry: Geometry


@dataclass(frozen=True)
class Header:
    geometry: Geometry
    pixel_type: str
    components: int


def sitk_module():
    """SimpleITK, imported on first use (``seg3d --help`` and listing folders never need it)."""
    import SimpleITK as sitk

    return sitk


def ending_of(name: str | Path) -> str | None:
    """The supported image file ending of a file name (``.nii.gz``, ``.nrrd`` ...), ``None`` if it has none."""
    low = Path(name).name.lower()
    return next((e for e in SUPPORTED_ENDINGS if low.endswith(e)), None)


def _check_ending(path: Path) -> None:
    if ending_of(path) is None:
        raise Seg3dError(f"unsupported file type (expected one of {', '.join(SUPPORTED_ENDINGS)})", path)


def read_header(path: str | Path) -> Header:
    """Geometry and pixel type without reading the voxels (fast; used by checks and fingerprints)."""
    path = Path(path)
    _check_ending(path)
    if not path.is_file():
        raise Seg3dError("file not found", path)
    sitk = sitk_module()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise Seg3dError(f"cannot read image header ({error_line(e)})", path) from None
    geo = Geometry(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                   tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))
    return Header(geo, sitk.GetPixelIDValueAsString(reader.GetPixelID()),
                  int(reader.GetNumberOfComponents()))


def error_line(e: Exception) -> str:
    """The useful line of a reader's exception: SimpleITK's messages start with a source location and end
    with the reason."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def read_image(path: str | Path) -> Image:
    """Read an image; any failure (missing, truncated gzip, not an image) becomes a :class:`Seg3dError`."""
    path = Path(path)
    _check_ending(path)
    if not path.is_file():
        raise Seg3dError("file not found", path)
    sitk = sitk_module()
    try:
        img = read_sitk(path)
        array = sitk.GetArrayFromImage(img)
    except RuntimeError as e:
        raise Seg3dError(f"cannot read image ({error_line(e)})", path) from None
    except (EOFError, OSError, ValueError) as e:  # defensive: truncated data surfacing from numpy
        raise Seg3dError(f"cannot read image ({e})", path) from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        # Vector pixels (e.g. RGB or 4D-as-vector NIfTI): put components first, as channels.
        array = np.moveaxis(array, -1, 0)
    return Image(array, Geometry.from_sitk(img))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compress: bool = True) -> None:
    """Write ``array`` (numpy order) with exactly ``geometry``, atomically."""
    path = Path(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    sitk = sitk_module()
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(img)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=compress)


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that bring an image to the canonical orientation.

    ``perm[k]`` is the original SimpleITK axis that becomes canonical axis ``k``; ``flip[k]`` says whether it
    is reversed. Canonical means each index axis points along the positive direction of the world axis it is
    closest to, so the canonical direction matrix is as close to identity as a permutation/flip allows.
    """

    perm: tuple[int, ...]
    flip: tuple[bool, ...]

    @classmethod
    def identity(cls, dim: int = 3) -> Reorientation:
        return cls(tuple(range(dim)), (False,) * dim)

    @classmethod
    def to_canonical(cls, geometry: Geometry) -> Reorientation:
        d = geometry.dim
        m = geometry.direction_matrix  # column j: world direction of index axis j
        best, best_score = None, -1.0
        for p in itertools.permutations(range(d)):  # p[j] = world axis for index axis j
            score = sum(abs(m[p[j], j]) for j in range(d))
            if score > best_score + 1e-9:
                best, best_score = p, score
        perm = [0] * d
        flip = [False] * d
        for j in range(d):
            k = best[j]
            perm[k] = j
            flip[k] = bool(m[k, j] < 0)
        return cls(tuple(perm), tuple(flip))

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm))) and not any(self.flip)

    def _numpy_axes(self):
        d = len(self.perm)
        np_perm = tuple(d - 1 - self.perm[d - 1 - a] for a in range(d))
        np_flip = tuple(a for a in range(d) if self.flip[d - 1 - a])
        return np_perm, np_flip

    def apply(self, array, channel_first: bool = False):
        """Original -> canonical, for numpy arrays or torch tensors in numpy axis order."""
        if self.is_identity:
            return array
        np_perm, np_flip = self._numpy_axes()
        off = 1 if channel_first else 0
        axes = tuple(range(off)) + tuple(a + off for a in np_perm)
        flips = tuple(a + off for a in np_flip)
        return _flip(_transpose(array, axes), flips)

    def invert(self, array, channel_first: bool = False):
        """Canonical -> original (exact inverse of :meth:`apply`)."""
        if self.is_identity:
            return array
        np_perm, np_flip = self._numpy_axes()
        off = 1 if channel_first else 0
        flips = tuple(a + off for a in np_flip)
        inv = tuple(int(i) for i in np.argsort(np_perm))
        axes = tuple(range(off)) + tuple(a + off for a in inv)
        return _transpose(_flip(array, flips), axes)

    def geometry(self, geometry: Geometry) -> Geometry:
        """The geometry of the canonical image (same physical voxels, permuted/flipped index axes)."""
        m = geometry.direction_matrix
        spacing = np.asarray(geometry.spacing)
        size = np.asarray(geometry.size)
        origin = np.asarray(geometry.origin, dtype=float).copy()
        d = geometry.dim
        new_dir = np.zeros_like(m)
        for k in range(d):
            j = self.perm[k]
            sign = -1.0 if self.flip[k] else 1.0
            new_dir[:, k] = sign * m[:, j]
            if self.flip[k]:
                origin = origin + m[:, j] * spacing[j] * (size[j] - 1)
        return Geometry(tuple(int(size[j]) for j in self.perm), tuple(float(spacing[j]) for j in self.perm),
                        tuple(float(v) for v in origin), tuple(float(v) for v in new_dir.ravel()))

    def to_dict(self) -> dict:
        return {"perm": list(self.perm), "flip": list(self.flip)}

    @classmethod
    def from_dict(cls, d: dict) -> Reorientation:
        return cls(tuple(int(v) for v in d["perm"]), tuple(bool(v) for v in d["flip"]))


def _transpose(x, axes):
    if hasattr(x, "permute"):
        return x.permute(*axes)
    return np.transpose(x, axes)


def _flip(x, axes):
    if not axes:
        return x
    if hasattr(x, "permute"):
        return x.flip(axes)
    return np.flip(x, axes)
