"""Atomic file writes: write a temporary file in the same folder, then rename over the target.

A killed process therefore leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seg3d.errors import Seg3dError

# what an OSError's errno means for someone writing a file, in words
_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "the file name is too long",
           errno.EIO: "input/output error (a failing disk or a lost network share)",
           errno.ENOENT: "the folder does not exist", errno.ENOTDIR: "a part of the path is not a folder",
           errno.EISDIR: "a folder has that name", errno.EFBIG: "the file is too large for the file system",
           errno.EMFILE: "too many open files"}


def describe_os_error(e: OSError) -> str:
    """The cause of a failed file operation in words, e.g. 'no space left on the device (errno 28)'."""
    if e.errno in _CAUSES:
        return f"{_CAUSES[e.errno]} (errno {e.errno})"
    return e.strerror or str(e) or type(e).__name__


def storage_error(target: str | Path, e: OSError, what: str = "cannot write") -> Seg3dError:
    """A :class:`Seg3dError` naming ``target`` (the user's file, never a temporary one) and the cause."""
    return Seg3dError(f"{what}: {describe_os_error(e)}", target)


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system holding ``folder`` (None if it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz``), so writers that pick a format from
    the file name (SimpleITK) still do the right thing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _part_affixes(target, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(target: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for formats written as several files (``case.mhd`` + ``case.zraw``).

    Yields ``<hidden folder next to target>/<target name>``; on success every file written there is moved next
    to ``target``, ``target`` itself last, so the header appears only when its data file is in place and names
    it by its final name. On failure the hidden folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name.split('.')[0][:80]}.", suffix=".part",
                                    dir=target.parent))
    try:
        yield tmp_dir / target.name
        mask = os.umask(0)
        os.umask(mask)
        files = sorted(tmp_dir.iterdir(), key=lambda p: p.name == target.name)  # the header last
        for f in files:
            os.chmod(f, 0o666 & ~mask)
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
def _part_affixes(target: Path, suffix: str | None = None) -> tuple[str, str]:
    """The hidden temporary name of ``target``: ``.<stem>.<random>.part<suffix>``."""
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    # the stem cut to 80 characters: the temporary name is never longer than the final one (file name limits)
    return f".{target.name.split('.')[0][:80]}.", ".part" + suffix


def partial_files(targets: Iterable[str | Path]) -> list[Path]:
    """Temporary files that :func:`atomic_path` left beside ``targets`` when its process was killed mid-write
    (a killed process runs no cleanup). One folder listing per folder, so cheap for thousands of targets.
    Only for targets no live process is writing: a runner removes them before it writes the target again."""
    by_folder: dict[Path, list[re.Pattern]] = {}
    for t in map(Path, targets):
        prefix, suffix = _part_affixes(t)
        by_folder.setdefault(t.parent, []).append(
            re.compile(re.escape(prefix) + r"[A-Za-z0-9_]+" + re.escape(suffix) + "$"))
    found = []
    for folder, patterns in by_folder.items():
        try:
            names = [n for n in os.listdir(folder) if n.startswith(".") and ".part" in n]
        except OSError:
            continue
        found += [folder / n for n in sorted(names) if any(p.match(n) for p in patterns)]
    return found


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(target: str | Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | Path, obj: Any, indent: int = 2) -> None:
    write_text_atomic(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_with_atomic(target: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)


def check_output_folder(folder: str | Path, need_bytes: int = 0) -> str | None:
    """Cheap checks of where outputs will go, before any work: raises :class:`Seg3dError` when ``folder``
    cannot be created or written (naming it and the cause); returns a warning when its file system has less
    than ``need_bytes`` (and less than 1 MiB) free, else None. Creates nothing that stays.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise Seg3dError(f"cannot create the output folder: {probe} is a file, not a folder", folder)
    what = "the output folder is not writable" if probe == folder else f"cannot create the output folder in {probe}"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".seg3d-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise storage_error(folder, e, what) from None
    free = free_bytes(probe)
    if free is not None and free < max(need_bytes, 1 << 20):
        return (f"{folder}: only {_size(free)} free on its file system (the masks need roughly "
                f"{_size(max(need_bytes, 0))}); cases that do not fit will fail")
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
