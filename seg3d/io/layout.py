"""Dataset layouts: nnU-Net v2 raw and the Medical Segmentation Decathlon.

``load_dataset`` only reads ``dataset.json`` and lists files; it never opens an image. It records what it
*expects* (one file per channel, a label per training case) so that :mod:`seg3d.io.checks` can report every
missing or broken file at once instead of failing at the first.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.image import SUPPORTED_ENDINGS, Geometry, ending_of, read_image


@dataclass(frozen=True)
class Case:
    """One case: its channel files (or one 4D file holding all channels) and its label, if any."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    four_d: bool = False  # MSD: a single 4D file with all channels along the 4th axis

    @property
    def files(self) -> tuple[Path, ...]:
        return self.images + ((self.label,) if self.label is not None else ())


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    layout: str  # "nnunetv2" | "msd"
    channel_names: tuple[str, ...]
    labels: dict[str, int]  # name -> value, background included, ordered by value
    file_ending: str
    cases: tuple[Case, ...]
    test_cases: tuple[Case, ...] = ()
    problems: tuple[str, ...] = field(default=())  # layout-level problems found while listing

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise Seg3dError("dataset.json not found (expected an nnU-Net v2 or MSD dataset folder)", path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Seg3dError(f"invalid JSON: {e}", path) from None
    except UnicodeDecodeError:
        raise Seg3dError("not a text file", path) from None
    if not isinstance(obj, dict):
        raise Seg3dError("expected a JSON object at the top level", path)
    return obj


def _parse_labels(raw, path: Path, msd: bool) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise Seg3dError("'labels' must be a non-empty object", path)
    out: dict[str, int] = {}
    for k, v in raw.items():
        name, value = (v, k) if msd else (k, v)
        if isinstance(value, list):
            raise Seg3dError(f"label '{name}': region-based labels (lists) are not supported", path)
        try:
            ivalue = int(value)
            if str(value).strip() != str(ivalue) and not (isinstance(value, (int, float)) and value == ivalue):
                raise ValueError
        except (TypeError, ValueError):
            raise Seg3dError(f"label '{name}' has a non-integer value {value!r}", path) from None
        if ivalue < 0:
            raise Seg3dError(f"label '{name}' has a negative value {ivalue}", path)
        if ivalue in out.values():
            raise Seg3dError(f"label value {ivalue} is declared twice", path)
        out[str(name)] = ivalue
    if 0 not in out.values():
        raise Seg3dError("labels must declare background with value 0", path)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def read_dataset_labels(dataset_json: str | Path) -> dict[str, int]:
    """Label names -> values from an nnU-Net v2 or MSD ``dataset.json`` (background included).

    Raises:
        Seg3dError: missing file, invalid JSON, no or malformed ``labels`` (names the file).
    """
    path = Path(dataset_json)
    meta = _read_json(path)
    if "labels" not in meta:
        raise Seg3dError("'labels' is missing", path)
    raw = meta["labels"]
    msd = "modality" in meta or (isinstance(raw, dict) and all(str(k).strip().isdigit() and isinstance(v, str)
                                                               for k, v in raw.items()))
    return _parse_labels(raw, path, msd=msd)


def _parse_channels(raw, path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(raw, dict) or not raw:
        raise Seg3dError(f"'{key}' must be a non-empty object like {{\"0\": \"CT\"}}", path)
    try:
        idx = sorted(int(k) for k in raw)
    except ValueError:
        raise Seg3dError(f"'{key}' keys must be channel numbers 0, 1, ...", path) from None
    if idx != list(range(len(idx))):
        raise Seg3dError(f"'{key}' must number channels 0..{len(idx) - 1} without gaps", path)
    return tuple(str(raw[str(i)]) for i in idx)


def load_dataset(root: str | Path) -> Dataset:
    """List a dataset folder (nnU-Net v2 raw or MSD layout) without opening images."""
    root = Path(root)
    if not root.is_dir():
        raise Seg3dError("dataset folder not found", root)
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    if "channel_names" in meta:
        return _load_nnunet(root, meta, meta_path)
    if "modality" in meta:
        return _load_msd(root, meta, meta_path)
    raise Seg3dError("neither 'channel_names' (nnU-Net v2) nor 'modality' (MSD) is declared", meta_path)


def _load_nnunet(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _parse_channels(meta["channel_names"], meta_path, "channel_names")
    if "labels" not in meta:
        raise Seg3dError("'labels' is missing", meta_path)
    labels = _parse_labels(meta["labels"], meta_path, msd=False)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in SUPPORTED_ENDINGS:
        raise Seg3dError(f"file_ending {ending!r} is not supported ({', '.join(SUPPORTED_ENDINGS)})", meta_path)
    problems: list[str] = []
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise Seg3dError("imagesTr/ folder not found", root)
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    ids: dict[str, None] = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        m = pattern.match(p.name)
        if m is None:
            problems.append(f"{p}: file name does not follow <case>_<XXXX>{ending}")
            continue
        if int(m["ch"]) >= len(channels):
            problems.append(f"{p}: channel {int(m['ch'])} is not declared in dataset.json "
                            f"({len(channels)} channel(s))")
        ids[m["case"]] = None
    label_ids: dict[str, Path] = {}
    if labels_dir.is_dir():
        for p in sorted(labels_dir.iterdir()):
            if p.name.startswith("."):
                continue
            if not p.name.endswith(ending):
                problems.append(f"{p}: label file does not end with {ending}")
                continue
            label_ids[p.name[: -len(ending)]] = p
    else:
        problems.append(f"{labels_dir}: labelsTr/ folder not found")
    for cid in label_ids:
        if cid not in ids:
            problems.append(f"{label_ids[cid]}: label without any image in imagesTr/")
    cases = tuple(
        Case(cid, tuple(images_dir / f"{cid}_{c:04d}{ending}" for c in range(len(channels))),
             labels_dir / f"{cid}{ending}")
        for cid in ids)
    problems += _num_training_problems(meta, meta_path, len(cases), "imagesTr/ holds")
    test_cases = _list_unlabelled(root / "imagesTs", ending, len(channels))
    return Dataset(root, str(meta.get("name", root.name)), "nnunetv2", channels, labels, ending, cases,
                   test_cases, tuple(problems))


def _list_unlabelled(folder: Path, ending: str, num_channels: int) -> tuple[Case, ...]:
    if not folder.is_dir():
        return ()
    return tuple(Case(cid, tuple(paths)) for cid, paths in group_channel_files(folder, num_channels,
                                                                                 ending).items())


def group_channel_files(folder: Path, num_channels: int, ending: str | None = None) -> dict[str, list[Path]]:
    """Group ``<case>_<XXXX><ending>`` files per case; single-channel models also accept plain ``<case><ending>``.

    Used for ``imagesTs`` and for ``seg3d predict`` input folders.
    """
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        e = ending if ending and p.name.endswith(ending) else ending_of(p.name)
        if e is None:
            continue
        stem = p.name[: -len(e)]
        m = re.match(r"^(?P<case>.+)_(?P<ch>\d{4})$", stem)
        if m:
            out.setdefault(m["case"], []).append(p)
        elif num_channels == 1:
            out.setdefault(stem, []).append(p)
    return out


def _num_training_problems(meta: dict, meta_path: Path, found: int, where: str) -> list[str]:
    n = meta.get("numTraining")
    if n is None:
        return []
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return [f"{meta_path}: numTraining must be a whole number, got {n!r}"]
    if n != found:
        return [f"{meta_path}: numTraining is {n} but {where} {found} case(s)"]
    return []


def _load_msd(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _parse_channels(meta["modality"], meta_path, "modality")
    if "labels" not in meta:
        raise Seg3dError("'labels' is missing", meta_path)
    labels = _parse_labels(meta["labels"], meta_path, msd=True)
    training = meta.get("training")
    if not isinstance(training, list):
        raise Seg3dError("'training' must be a list of {\"image\": ..., \"label\": ...}", meta_path)
    problems: list[str] = []
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.append(f"{meta_path}: training[{i}] has no 'image' file name")
            continue
        if entry.get("label") is not None and not isinstance(entry["label"], str):
            problems.append(f"{meta_path}: training[{i}] 'label' is not a file name")
            continue
        img = (root / entry["image"]).resolve()
        lab = (root / entry["label"]).resolve() if entry.get("label") else None
        ending = ending_of(img.name) or ".nii.gz"
        cases.append(Case(img.name[: -len(ending)], (img,), lab, four_d=len(channels) > 1))
    problems += _num_training_problems(meta, meta_path, len(training), "'training' lists")
    test = []
    test_list = meta.get("test") or []
    if not isinstance(test_list, list):
        problems.append(f"{meta_path}: 'test' must be a list of file names")
        test_list = []
    for i, item in enumerate(test_list):
        if not isinstance(item, str):
            problems.append(f"{meta_path}: test[{i}] is not a file name")
        img = (root / item).resolve() if isinstance(item, str) else None
        if img is not None:
            ending = ending_of(img.name) or ".nii.gz"
            test.append(Case(img.name[: -len(ending)], (img,), None, four_d=len(channels) > 1))
    ending = ending_of(cases[0].images[0].name) if cases else ".nii.gz"
    return Dataset(root, str(meta.get("name", root.name)), "msd", channels, labels, ending or ".nii.gz",
                   tuple(cases), tuple(test), tuple(problems))


def dataset_digest(dataset: Dataset, salt: str = "") -> str:
    """sha256 that changes whenever dataset.json, a file name, size or modification time changes (or ``salt``,
    the caller's method version). Reads no image."""
    h = hashlib.sha256(salt.encode())
    try:
        h.update(dataset.dataset_json.read_bytes())
    except OSError:
        h.update(b"<no dataset.json>")
    files = sorted({p for c in dataset.cases + dataset.test_cases for p in c.files})
    for p in files:
        rel = os.path.relpath(p, dataset.root)
        try:
            st = p.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def read_case_images(case: Case, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """All channels of a case as one float32 array ``(C, z, y, x)`` and the geometry of channel 0.

    Raises :class:`Seg3dError` naming the file when a channel is missing, unreadable or on another grid.
    """
    if case.four_d:
        img = read_image(case.images[0])
        arr = img.array
        if arr.ndim == 4 and img.geometry.dim == 4:  # SimpleITK 4D image: (t, z, y, x)
            geo3 = _drop_last_axis(img.geometry)
            img = type(img)(arr, geo3)
        elif arr.ndim == 3:
            arr = arr[None]
        if arr.shape[0] != num_channels:
            raise Seg3dError(f"expected {num_channels} channel(s) in the 4D image, found {arr.shape[0]}",
                             case.images[0])
        return arr.astype(np.float32, copy=False), img.geometry
    if len(case.images) != num_channels:
        raise Seg3dError(f"case '{case.case_id}' has {len(case.images)} channel file(s), the model expects "
                         f"{num_channels}", case.images[0] if case.images else None)
    arrays, geo0 = [], None
    for p in case.images:
        img = read_image(p)
        if img.array.ndim != 3 or img.geometry.dim != 3:
            raise Seg3dError(f"expected a 3D image, got {img.geometry.dim}D with array shape "
                             f"{img.array.shape}", p)
        if geo0 is None:
            geo0 = img.geometry
        else:
            bad = geo0.mismatches(img.geometry)
            if bad:
                raise Seg3dError("channel geometry differs from channel 0: " + "; ".join(bad), p)
        arrays.append(img.array.astype(np.float32, copy=False))
    return np.stack(arrays), geo0


def read_case_label(case: Case) -> tuple[np.ndarray, Geometry]:
    if case.label is None:
        raise Seg3dError(f"case '{case.case_id}' has no label")
    img = read_image(case.label)
    return img.array, img.geometry


def _drop_last_axis(g: Geometry) -> Geometry:
    d = g.dim
    m = np.asarray(g.direction).reshape(d, d)[: d - 1, : d - 1]
    return Geometry(g.size[: d - 1], g.spacing[: d - 1], g.origin[: d - 1], tuple(float(v) for v in m.ravel()))
