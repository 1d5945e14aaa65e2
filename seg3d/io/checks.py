"""Dataset checks that report *every* problem at once, each naming the file and what is wrong.

A case is inspected by :func:`inspect_case`: each of its files is read exactly once (header and voxels in
one SimpleITK call, which costs half of a header read followed by a voxel read), then checked: existence,
readability, dimensionality, geometry agreement between channels and label, corrupt or truncated data,
NaN/Inf in images, non-integer or undeclared label values. The voxels it read are handed back, so the
fingerprint (:func:`seg3d.fingerprint.scan_dataset`) checks and measures a dataset in a single pass.
Cases run in worker processes (:func:`map_cases`), one case in memory per worker.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.errors import Seg3dError
from seg3d.io.image import Geometry, error_line, sitk_module
from seg3d.io.layout import Case, Dataset, load_dataset
from seg3d.io.niigz import read_sitk_checked
from seg3d.parallel import map_cases
from seg3d.progress import ProgressFn


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file it concerns (None for the dataset as a whole) and what."""

    path: Path | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


@dataclass(frozen=True)
class CaseSpec:
    """What a worker must know about the dataset to check one case (small and picklable)."""

    channel_names: tuple[str, ...]
    label_values: tuple[int, ...]

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


@dataclass
class CaseVoxels:
    """The voxels of a case that passed every check, as read (numpy order, original dtypes)."""

    channels: list[np.ndarray]  # one (z, y, x) array per channel
    label: np.ndarray | None
    geometry: Geometry  # of channel 0 (spatial, 3D)
    label_counts: dict[int, int]  # label value -> voxel count (whole label image)
    _keep: tuple = ()  # SimpleITK images backing the array views


@dataclass
class _Opened:
    path: Path
    image: Any  # SimpleITK image (kept alive: arrays are views of its buffer); None if unreadable
    geometry: Geometry  # spatial part (4D files: the first three axes)
    four_d: bool  # channels along a 4th axis (True) or as vector components (False) when multi-channel
    nonfinite: int = 0  # NaN/Inf voxels stored in the file (SimpleITK turns NIfTI ones into 0)


def _spatial(size, spacing, origin, direction, d: int) -> Geometry:
    n = len(size)
    m = np.asarray(direction, dtype=float).reshape(n, n)[:d, :d]
    return Geometry(tuple(int(v) for v in size[:d]), tuple(float(v) for v in spacing[:d]),
                    tuple(float(v) for v in origin[:d]), tuple(float(v) for v in m.ravel()))


def _open(path: Path, role: str, channels: int, problems: list[Problem]) -> _Opened | None:
    """Read ``path`` once (header and voxels) and check its dimensionality.

    ``channels`` > 1 means one multi-channel (MSD 4D) file. Header and voxels come from one call: SimpleITK's
    NIfTI reader parses the header again on every call. When only the voxels are damaged, the header's
    geometry is still returned (``image`` None) so that the other files of the case can be compared with it.
    """
    if not path.is_file():
        problems.append(Problem(path, f"missing: {role} not found"))
        return None
    img, nonfinite = None, 0
    try:
        img, nonfinite = read_sitk_checked(path)
        src = img
        size, comps = tuple(img.GetSize()), int(img.GetNumberOfComponentsPerPixel())
    except (RuntimeError, OSError) as e:  # OSError: e.g. no permission to read the file
        src = _header(path)
        if src is None:
            problems.append(Problem(path, f"not a readable image ({error_line(e)})"))
            return None
        problems.append(Problem(path, f"cannot read the voxels, the file is truncated or corrupt "
                                      f"({error_line(e)})"))
        size, comps = tuple(src.GetSize()), int(src.GetNumberOfComponents())
    dim = len(size)
    args = (size, src.GetSpacing(), src.GetOrigin(), src.GetDirection())
    if channels == 1:
        if comps != 1:
            problems.append(Problem(path, f"{role} has {comps} components per voxel (vector/RGB image); "
                                          "expected a scalar 3D image"))
        elif dim == 4:
            what = "dataset.json declares one channel per file" if role.startswith(("channel", "image")) \
                else "a label must be 3D"
            problems.append(Problem(path, f"{role} is a 4D image (size {size}) but {what}"))
        elif dim != 3:
            problems.append(Problem(path, f"{role} is a {dim}D image (size {size}); expected 3D"))
        else:
            return _Opened(path, img, _spatial(*args, 3), False, nonfinite)
        return None
    if dim == 4 and size[3] == channels and comps == 1:
        return _Opened(path, img, _spatial(*args, 3), True, nonfinite)
    if dim == 3 and comps == channels:
        return _Opened(path, img, _spatial(*args, 3), False, nonfinite)
    got = f"{dim}D, size {size}" + (f", {comps} components" if comps > 1 else "")
    problems.append(Problem(path, f"{role}: expected a 4D image holding {channels} channels (dataset.json "
                                  f"'modality'), got {got}"))
    return None


def _header(path: Path):
    """A reader holding the header of ``path``, or None when even the header is unreadable."""
    reader = sitk_module().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _check_finite(f: _Opened, arr: np.ndarray, problems: list[Problem]) -> None:
    bad = f.nonfinite
    if arr.dtype.kind in "fc":
        bad = max(bad, arr.size - int(np.count_nonzero(np.isfinite(arr))))
    if bad:
        problems.append(Problem(f.path, f"{bad} voxel(s) are NaN or infinite"))


def label_value_counts(arr: np.ndarray) -> tuple[dict[float, int], float | None]:
    """Voxel count per label value and one non-integer value if any; slab-wise so memory stays small."""
    flat = arr.reshape(-1)
    counts: Counter = Counter()
    nonint = None
    step = 1 << 22
    for s in range(0, flat.size, step):
        chunk = flat[s:s + step]
        if chunk.dtype.kind == "b":
            chunk = chunk.view(np.uint8)
        if chunk.dtype.kind in "ui":
            lo, hi = int(chunk.min()), int(chunk.max())
            if hi - lo < 1 << 16:
                bc = np.bincount((chunk.astype(np.int64) - lo) if lo else chunk, minlength=hi - lo + 1)
                counts.update({lo + int(i): int(bc[i]) for i in np.flatnonzero(bc)})
                continue
        else:
            odd = ~np.isfinite(chunk) | (chunk != np.round(chunk))
            if nonint is None and odd.any():
                nonint = float(chunk[np.flatnonzero(odd)[0]])
            chunk = chunk[~odd]
        vals, cnt = np.unique(chunk, return_counts=True)
        counts.update({(int(v) if float(v).is_integer() else float(v)): int(c) for v, c in zip(vals, cnt)})
    return dict(counts), nonint


def _check_label(path: Path, arr: np.ndarray, spec: CaseSpec, problems: list[Problem]) -> dict[int, int]:
    counts, nonint = label_value_counts(arr)
    if nonint is not None:
        problems.append(Problem(path, f"label holds non-integer values (e.g. {nonint:g}); labels must be whole "
                                      "numbers"))
    undeclared = sorted(v for v in counts if v not in spec.label_values)
    if undeclared:
        shown = ", ".join(f"{v:g}" for v in undeclared[:10]) + (" ..." if len(undeclared) > 10 else "")
        problems.append(Problem(path, f"label values {shown} are not declared in dataset.json 'labels' "
                                      f"(declared: {', '.join(map(str, spec.label_values))})"))
    return {int(v): c for v, c in counts.items()}


def inspect_case(case: Case, spec: CaseSpec, labelled: bool = True,
                 keep_voxels: bool = False) -> tuple[list[Problem], CaseVoxels | None]:
    """Every problem of one case; with ``keep_voxels``, also its voxels when there is no problem."""
    problems: list[Problem] = []
    c = spec.num_channels
    opened: list[_Opened] = []
    if case.four_d:
        f = _open(case.images[0], f"image of case '{case.case_id}'", c, problems)
        opened += [f] if f else []
    else:
        for k, p in enumerate(case.images):
            f = _open(p, f"channel {k} ({spec.channel_names[k] if k < c else '?'}) of case '{case.case_id}'",
                      1, problems)
            opened += [f] if f else []
    lab = None
    if labelled:
        if case.label is None:
            problems.append(Problem(case.images[0] if case.images else None,
                                    f"case '{case.case_id}' has no label (missing 'label' in dataset.json)"))
        elif case.label.parent.is_dir():  # a missing labelsTr/ is one layout problem, not one per case
            lab = _open(case.label, f"label of case '{case.case_id}'", 1, problems)
    ref = opened[0] if opened else None
    for f in opened[1:]:
        bad = ref.geometry.mismatches(f.geometry)
        if bad:
            problems.append(Problem(f.path, f"channel geometry differs from {ref.path.name}: " + "; ".join(bad)))
    if ref is not None and lab is not None:
        bad = ref.geometry.mismatches(lab.geometry)
        if bad:
            problems.append(Problem(lab.path, f"label does not match image {ref.path.name}: " + "; ".join(bad)))

    sitk = sitk_module()
    channels: list[np.ndarray] = []
    for f in opened:
        if f.image is None:
            continue
        arr = sitk.GetArrayViewFromImage(f.image)
        _check_finite(f, arr, problems)
        if case.four_d:
            channels += list(arr if f.four_d else np.moveaxis(arr, -1, 0))
        else:
            channels.append(arr)
    label_arr, counts = None, {}
    if lab is not None and lab.image is not None:
        label_arr = sitk.GetArrayViewFromImage(lab.image)
        counts = _check_label(lab.path, label_arr, spec, problems)
    if problems or not keep_voxels or ref is None or (labelled and label_arr is None):
        return problems, None
    keep = tuple(f.image for f in opened) + ((lab.image,) if lab is not None else ())
    return problems, CaseVoxels(channels, label_arr, ref.geometry, counts, keep)


# ---- dataset level ---------------------------------------------------------------------------------------

def layout_problems(dataset: Dataset) -> list[Problem]:
    """Problems visible without opening an image: layout issues, duplicate ids, no cases."""
    out = []
    for s in dataset.problems:  # layout.py writes "path: message"
        head, sep, tail = s.partition(": ")
        out.append(Problem(Path(head), tail) if sep else Problem(None, s))
    if not dataset.cases:
        out.append(Problem(dataset.root / ("imagesTr" if dataset.layout == "nnunetv2" else "dataset.json"),
                           "no training cases found"))
    for kind, cases in (("training", dataset.cases), ("test", dataset.test_cases)):
        for cid, n in Counter(c.case_id for c in cases).items():
            if n > 1:
                files = sorted({str(c.images[0]) for c in cases if c.case_id == cid and c.images})
                out.append(Problem(dataset.dataset_json, f"duplicate case id '{cid}': {kind} case listed {n} "
                                                         f"times ({', '.join(files)})"))
    return out


def unique_cases(cases: Sequence[Case]) -> list[Case]:
    """First occurrence of each case id (duplicates are reported once, not checked twice)."""
    seen: dict[str, Case] = {}
    for c in cases:
        seen.setdefault(c.case_id, c)
    return list(seen.values())


def expected_test_cases(dataset: Dataset) -> list[Case]:
    """imagesTs cases with every declared channel expected (so a missing channel file is reported)."""
    out = []
    for case in unique_cases(dataset.test_cases):
        if dataset.layout == "nnunetv2" and case.images and not case.four_d:
            folder = case.images[0].parent
            plain = len(case.images) == 1 and case.images[0].name == case.case_id + dataset.file_ending
            if not plain:
                case = Case(case.case_id, tuple(folder / f"{case.case_id}_{k:04d}{dataset.file_ending}"
                                                for k in range(dataset.num_channels)))
        out.append(case)
    return out


def spec_of(dataset: Dataset) -> CaseSpec:
    return CaseSpec(dataset.channel_names, dataset.label_values)


def load_or_problem(dataset: Dataset | str | Path) -> tuple[Dataset | None, list[Problem]]:
    """Accept a loaded dataset or a folder; an invalid dataset.json/folder becomes one problem."""
    if isinstance(dataset, Dataset):
        return dataset, []
    try:
        return load_dataset(dataset), []
    except Seg3dError as e:
        msg = str(e)
        if e.path is not None and msg.startswith(f"{e.path}: "):
            msg = msg[len(f"{e.path}: "):]
        return None, [Problem(e.path, msg)]


def check_dataset(dataset: Dataset | str | Path, workers: int | None = None,
                  progress: ProgressFn | None = None) -> list[Problem]:
    """Every problem of a dataset (training cases with labels, imagesTs images), in case order.

    ``workers``: processes (None: all cores; 0 or 1: in this process).
    """
    ds, problems = load_or_problem(dataset)
    if ds is None:
        return problems
    problems = layout_problems(ds)
    spec = spec_of(ds)
    items = [(c, True) for c in unique_cases(ds.cases)] + [(c, False) for c in expected_test_cases(ds)]
    for case_problems in map_cases(functools.partial(_check_one, spec=spec), items, workers, progress,
                                   "cases"):
        problems.extend(case_problems)
    return problems


def _check_one(item: tuple[Case, bool], spec: CaseSpec) -> list[Problem]:
    case, labelled = item
    return inspect_case(case, spec, labelled=labelled)[0]
