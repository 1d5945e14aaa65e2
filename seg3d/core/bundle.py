"""The bundle (``seg3d export``): a model folder's inference half, portable. This module spells its file names.

Layout::

    BUNDLE/
      bundle.json           BundleManifest: format, folds, predict defaults, labels, versions, file checksums
      plans.json            the plan (preprocessing, patch, mirror axes, labels): the model folder's copy
      model.json            ModelInfo of the model folder
      postprocessing.json   the connected-component decision (when the model folder has one)
      networks/fold_K.xml + fold_K.bin     (format ``openvino``: OpenVINO IR, fp32 weights)
      networks/fold_K.onnx                 (format ``onnx``)

No checkpoint and no training code is needed to predict from it: ``seg3d predict -m BUNDLE`` reads the plan
and runs each fold's network through OpenVINO. Every file is listed in ``bundle.json`` with its sha256 and
checked when the bundle is opened, so a bundle copied by hand that lost or damaged a file is refused,
naming the file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seg3d.errors import Seg3dError

BUNDLE_JSON = "bundle.json"
NETWORKS_DIR = "networks"
BUNDLE_FORMATS = ("openvino", "onnx")
FORMAT_VERSION = 1


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (it holds ``bundle.json``)."""
    return (Path(path) / BUNDLE_JSON).is_file()


def network_files(fmt: str, fold: str) -> tuple[str, ...]:
    """Relative paths of one fold's network in a bundle of format ``fmt``, the file to open first."""
    if fmt == "openvino":
        return f"{NETWORKS_DIR}/fold_{fold}.xml", f"{NETWORKS_DIR}/fold_{fold}.bin"
    if fmt == "onnx":
        return (f"{NETWORKS_DIR}/fold_{fold}.onnx",)
    raise Seg3dError(f"unknown bundle format '{fmt}' (choose from {', '.join(BUNDLE_FORMATS)})")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class BundleManifest:
    """``bundle.json``.

    Attributes:
        format: ``openvino`` (IR) or ``onnx``.
        config: the plan configuration the networks were trained for.
        folds: fold names, in the order their probabilities are averaged.
        step / tta / mirror_axes: the ``seg3d predict`` defaults the bundle reproduces (window step as a
            fraction of the patch; mirroring TTA over these array axes).
        patch_size: the network's window (array order).
        labels: label name -> value; channel_names: input channels in order.
        seg3d_version / runtime_versions: who wrote it (``{"openvino": "2026.4.1", "torch": ...}``).
        source_weights_sha256: checksum of the model folder's checkpoints it was exported from.
        checkpoint: which checkpoint kind was exported (final, best, latest).
        files: relative path -> sha256 of every other file of the bundle.
    """

    format: str
    config: str
    folds: tuple[str, ...]
    step: float
    tta: bool
    mirror_axes: tuple[int, ...]
    patch_size: tuple[int, ...]
    labels: dict[str, int]
    channel_names: tuple[str, ...]
    seg3d_version: str
    runtime_versions: dict[str, str]
    source_weights_sha256: str
    checkpoint: str = "final"
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("folds", "mirror_axes", "patch_size", "channel_names"):
            d[k] = list(d[k])
        return d

    @classmethod
    def load(cls, bundle_dir: str | Path) -> BundleManifest:
        path = Path(bundle_dir) / BUNDLE_JSON
        try:
            d = json.loads(path.read_text())
            m = cls(**{**d, "folds": tuple(str(f) for f in d["folds"]),
                       "mirror_axes": tuple(int(a) for a in d["mirror_axes"]),
                       "patch_size": tuple(int(p) for p in d["patch_size"]),
                       "channel_names": tuple(d["channel_names"])})
        except FileNotFoundError:
            raise Seg3dError("bundle.json not found: is this a bundle written by `seg3d export`?", path) from None
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as e:
            raise Seg3dError(f"malformed bundle.json ({type(e).__name__}: {e})", path) from None
        if m.format_version > FORMAT_VERSION:
            raise Seg3dError(f"bundle format version {m.format_version} is newer than this seg3d reads "
                             f"({FORMAT_VERSION}); update seg3d", path)
        if m.format not in BUNDLE_FORMATS:
            raise Seg3dError(f"unknown bundle format '{m.format}'", path)
        return m


class Bundle:
    """A bundle folder: its manifest, the paths of its files, and the integrity check.

    >>> b = Bundle("export/hippocampus").require()       # doctest: +SKIP
    >>> b.network_path("0")                                # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r})"

    @property
    def manifest_json(self) -> Path:
        return self.path / BUNDLE_JSON

    def network_path(self, fold: str, fmt: str | None = None) -> Path:
        """The file a runtime opens for ``fold`` (``networks/fold_K.xml`` or ``.onnx``)."""
        return self.path / network_files(fmt or self.manifest().format, fold)[0]

    def manifest(self) -> BundleManifest:
        return BundleManifest.load(self.path)

    # --- what the Predictor reads, under the model folder's names (ModelFolder spells them) ----------------
    @property
    def plans_json(self) -> Path:
        return self._as_model_folder().plans_json

    @property
    def model_json(self) -> Path:
        return self._as_model_folder().model_json

    @property
    def postprocessing_json(self) -> Path:
        return self._as_model_folder().postprocessing_json

    def load_plan(self):
        return self._as_model_folder().load_plan()

    def load_info(self):
        return self._as_model_folder().load_info()

    def load_postprocessing_dict(self) -> dict | None:
        return self._as_model_folder().load_postprocessing_dict()

    def weights_checksum(self, folds=None, kind: str = "final") -> str:
        """The checksum of the model folder's checkpoints this bundle was exported from (provenance: the same
        value a prediction from that model folder records)."""
        return self.manifest().source_weights_sha256

    def available_folds(self, kind: str = "final") -> list[str]:
        """The folds the bundle holds (``kind`` is the model folder's notion; a bundle holds one kind)."""
        return list(self.manifest().folds)

    def _as_model_folder(self):
        from seg3d.core.model_folder import ModelFolder

        return ModelFolder(self.path)

    def require(self) -> Bundle:
        """The bundle, checked: it exists, its manifest reads, every listed file is there with its sha256.

        Raises:
            Seg3dError: naming the missing or changed file.
        """
        if not self.path.is_dir():
            raise Seg3dError("bundle folder not found", self.path)
        m = self.manifest()
        for rel, digest in m.files.items():
            p = self.path / rel
            if not p.is_file():
                raise Seg3dError("file of the bundle is missing (copy the whole folder)", p)
            if sha256_file(p) != digest:
                raise Seg3dError("file of the bundle does not match its checksum in bundle.json (damaged or "
                                 "edited)", p)
        for fold in m.folds:
            for rel in network_files(m.format, fold):
                if rel not in m.files:
                    raise Seg3dError(f"bundle.json lists fold {fold} but not its network file {rel}",
                                     self.manifest_json)
        return self
