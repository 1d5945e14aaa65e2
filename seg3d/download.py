"""Download a Medical Segmentation Decathlon task and convert it to the nnU-Net v2 raw layout.

Safe by construction: the archive is streamed to a temporary file and its md5 checked before anything is
extracted; extraction uses tarfile's ``data`` filter (no absolute paths, no ``..``, no links out, no device
files); conversion happens in a hidden folder next to the target which is renamed into place only at the very
end. A corrupt archive or an interrupted run therefore never leaves a half-converted dataset behind.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from seg3d.atomic import atomic_path, write_json_atomic
from seg3d.errors import Seg3dError
from seg3d.progress import ProgressFn, report

# SimpleITK and urllib imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast

_BASE = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
# The public MSD archives (the AWS mirror the MONAI team maintains) and their md5 checksums.
MSD_TASKS: dict[str, tuple[str, str]] = {
    "Task01_BrainTumour": (f"{_BASE}/Task01_BrainTumour.tar", "240a19d752f0d9e9101544901065d872"),
    "Task02_Heart": (f"{_BASE}/Task02_Heart.tar", "06ee59366e1e5124267b774dbd654057"),
    "Task03_Liver": (f"{_BASE}/Task03_Liver.tar", "a90ec6c4aa7f6a3d087205e23d4e6397"),
    "Task04_Hippocampus": (f"{_BASE}/Task04_Hippocampus.tar", "9d24dba78a72977dbd1d2e110310f31b"),
    "Task05_Prostate": (f"{_BASE}/Task05_Prostate.tar", "35138f08b1efaef89d7424d2bcc928db"),
    "Task06_Lung": (f"{_BASE}/Task06_Lung.tar", "8afd997733c7fc0432f71255ba4e52dc"),
    "Task07_Pancreas": (f"{_BASE}/Task07_Pancreas.tar", "4f7080cfca169fa8066d17ce6eb061e4"),
    "Task08_HepaticVessel": (f"{_BASE}/Task08_HepaticVessel.tar", "641d79e80ec66453921d997fbf12a29c"),
    "Task09_Spleen": (f"{_BASE}/Task09_Spleen.tar", "410d4a301da4e5b2f6f86ec3ddba524e"),
    "Task10_Colon": (f"{_BASE}/Task10_Colon.tar", "bad7a188931dc2f6acf72b08eb6202d0"),
}
_TASK_RE = re.compile(r"^Task(\d{2,3})_(\w+)$")
CHUNK = 1 << 20


def resolve_task(task: str, custom: bool = False) -> str:
    """``Task04_Hippocampus``, ``Task04``, ``4`` or ``hippocampus`` → ``Task04_Hippocampus``.

    With ``custom`` (an explicit --url), any well-formed ``TaskNN_Name`` is accepted.
    """
    t = task.strip()
    for name in MSD_TASKS:
        num, label = _TASK_RE.match(name).groups()
        if t.lower() in (name.lower(), f"task{num}", num, str(int(num)), label.lower()):
            return name
    if custom and _TASK_RE.match(t):
        return t
    raise Seg3dError(f"unknown MSD task {task!r}; known: {', '.join(MSD_TASKS)} "
                     "(for another archive give --url and a TaskNN_Name)")


def dataset_name(task: str) -> str:
    """nnU-Net v2 folder name: ``Task04_Hippocampus`` → ``Dataset004_Hippocampus``."""
    num, label = _TASK_RE.match(task).groups()
    return f"Dataset{int(num):03d}_{label}"


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, target: Path, md5: str | None, progress: ProgressFn | None = None, timeout: float = 60) -> Path:
    """Stream ``url`` to ``target`` (atomically), checking its md5 on the way; a local path is copied."""
    import urllib.error
    import urllib.request

    local = Path(url)
    if "://" not in url and local.is_file():
        url = local.resolve().as_uri()
    h = hashlib.md5()
    with atomic_path(target, suffix=".tar") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                report(progress, 0, total, "downloading")
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    report(progress, done, max(total, done), "downloading")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise Seg3dError(f"download failed ({reason})", url) from None
        if total and done != total:
            raise Seg3dError(f"download incomplete: {done} of {total} bytes", url)
        if md5 and h.hexdigest() != md5.lower():
            raise Seg3dError(f"checksum mismatch: md5 {h.hexdigest()} != expected {md5.lower()} "
                             "(corrupt or different file; nothing was extracted)", url)
    return target


def _extract(archive: Path, dest: Path, source: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise Seg3dError(f"unsafe archive member refused ({e}); nothing was kept", source) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise Seg3dError(f"corrupt or unreadable archive ({e}); nothing was kept", source) from None


def _find_task_root(extracted: Path) -> Path:
    candidates = [p.parent for p in extracted.rglob("dataset.json") if not p.name.startswith("._")]
    if not candidates:
        raise Seg3dError("the archive holds no dataset.json (is it an MSD task?)")
    return min(candidates, key=lambda p: len(p.parts))


def _case_id(rel: str) -> str:
    name = Path(rel).name
    for e in (".nii.gz", ".nii"):
        if name.endswith(e):
            return name[: -len(e)]
    raise Seg3dError(f"unexpected file type in dataset.json: {rel}")


def _copy_nifti(src: Path, dst: Path) -> None:
    """Byte copy when already ``.nii.gz`` (exact), else re-encode (an uncompressed ``.nii``)."""
    if src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
        return
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), useCompression=True)


def _write_channels(src: Path, out_dir: Path, case_id: str, num_channels: int) -> None:
    """Split a 4D (or vector) image into ``<case>_XXXX.nii.gz`` 3D files with the same geometry."""
    import SimpleITK as sitk

    if not src.is_file():
        raise Seg3dError("image listed in dataset.json is missing from the archive", src)
    if num_channels == 1:
        _copy_nifti(src, out_dir / f"{case_id}_0000.nii.gz")
        return
    try:
        img = sitk.ReadImage(str(src))
    except RuntimeError as e:
        raise Seg3dError(f"cannot read image ({str(e).strip().splitlines()[-1]})", src) from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        chans = [sitk.VectorIndexSelectionCast(img, c) for c in range(img.GetNumberOfComponentsPerPixel())]
    elif img.GetDimension() == 4:
        size = list(img.GetSize())
        chans = [sitk.Extract(img, size[:3] + [0], [0, 0, 0, c]) for c in range(size[3])]
    else:
        chans = [img]
    if len(chans) != num_channels:
        raise Seg3dError(f"expected {num_channels} channels (dataset.json 'modality'), found {len(chans)}", src)
    for c, ch in enumerate(chans):
        sitk.WriteImage(ch, str(out_dir / f"{case_id}_{c:04d}.nii.gz"), useCompression=True)


def convert_msd(task_root: Path, out: Path, progress: ProgressFn | None = None) -> None:
    """Write the nnU-Net v2 version of an extracted MSD task into ``out`` (an empty folder)."""
    meta_path = task_root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        modality = {str(k): str(v) for k, v in meta["modality"].items()}
        labels = {str(name): int(value) for value, name in meta["labels"].items()}
        training = [(e["image"], e["label"]) for e in meta["training"]]
        test = list(meta.get("test", []))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise Seg3dError(f"not an MSD dataset.json ({type(e).__name__}: {e})", meta_path) from None
    n = len(modality)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test else ()):
        (out / sub).mkdir(parents=True)
    total = len(training) + len(test)
    for i, (img, lab) in enumerate(training):
        cid = _case_id(img)
        _write_channels(task_root / img, out / "imagesTr", cid, n)
        if not (task_root / lab).is_file():
            raise Seg3dError("label listed in dataset.json is missing from the archive", task_root / lab)
        _copy_nifti(task_root / lab, out / "labelsTr" / f"{cid}.nii.gz")
        report(progress, i + 1, total, cid)
    for j, img in enumerate(test):
        cid = _case_id(img)
        _write_channels(task_root / img, out / "imagesTs", cid, n)
        report(progress, len(training) + j + 1, total, cid)
    converted = {k: v for k, v in meta.items() if k not in ("modality", "labels", "training", "test",
                                                             "numTest", "tensorImageSize")}
    converted.update({"channel_names": modality, "labels": labels, "numTraining": len(training),
                      "file_ending": ".nii.gz", "converted_from": "Medical Segmentation Decathlon (seg3d download)"})
    write_json_atomic(out / "dataset.json", converted)


def download_msd(task: str, out_dir: str | Path, url: str | None = None, md5: str | None = None,
                 keep_archive: bool = False, progress: ProgressFn | None = None,
                 convert_progress: ProgressFn | None = None) -> Path:
    """Download, verify, extract and convert an MSD task; returns ``out_dir/DatasetNNN_Name``.

    ``url``/``md5`` override the table (mirrors, or a local archive path). An archive already present in
    ``out_dir`` with the right checksum is reused instead of downloaded again.
    """
    task = resolve_task(task, custom=url is not None)
    default_url, default_md5 = MSD_TASKS.get(task, (None, None))
    url = url or default_url
    md5 = md5 if md5 is not None else (default_md5 if url == default_url else None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / dataset_name(task)
    if final.exists():
        raise Seg3dError("already exists; remove it or choose another output folder", final)
    archive = out_dir / f"{task}.tar"
    if not (archive.is_file() and md5 and md5_of(archive) == md5.lower()):
        fetch(url, archive, md5, progress)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=out_dir))
    try:
        try:
            _extract(archive, work / "extracted", url)
        except Seg3dError:
            archive.unlink(missing_ok=True)  # useless, and would be reused next time
            raise
        staged = work / final.name
        convert_msd(_find_task_root(work / "extracted"), staged, convert_progress)
        staged.rename(final)  # same file system: atomic
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return final
