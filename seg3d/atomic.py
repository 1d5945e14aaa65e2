"""Atomic file writes: write a temporary file in the same folder, then rename over the target.

A killed process therefore leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def _part_affixes(target: Path, suffix: str | None = None) -> tuple[str, str]:
    """The hidden temporary name of ``target``: ``.<stem>.<random>.part<suffix>``."""
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    return f".{target.name.split('.')[0]}.", ".part" + suffix


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
