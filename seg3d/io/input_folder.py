"""A folder of images to predict: every entry in it accounted for.

``<case>_<XXXX><ending>`` files are channel XXXX of a case; a one-channel model also takes ``<case><ending>``.
:func:`list_case_folder` sorts every entry of the folder into exactly one of: a channel file of a case to
predict, *skipped* with a reason (hidden, a folder, not an image, the data file of a ``.mhd``/``.nhdr`` header),
or *failed* with a reason (two files claiming one case and channel, a case id that differs from another only
in letter case, a name that does not fit the model's channels, a missing channel). Nothing is dropped without
a word, so a batch summary can add up to the number of files in the folder.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from seg3d.errors import Seg3dError
from seg3d.io.image import DETACHED_ENDINGS, SUPPORTED_ENDINGS

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
# data files a detached header (.mhd / .nhdr) may name next to it
_DATA_ENDINGS = (".raw", ".zraw", ".raw.gz", ".img", ".img.gz", ".dat")


def ending_of(name: str) -> str | None:
    """The supported image ending of a file name (case-insensitive), or None."""
    low = name.lower()
    return next((e for e in SUPPORTED_ENDINGS if low.endswith(e)), None)


@dataclass(frozen=True)
class InputIssue:
    """Files of the folder that are not predicted: ``status`` "skipped" or "failed", a ``kind`` and the reason.

    ``kind``: skipped: "hidden", "folder", "not an image", "data file"; failed: "ambiguous", "name",
    "channels", "unreadable" (for later stages: "output", ...).
    """

    status: str
    kind: str
    paths: tuple[Path, ...]
    reason: str
    case_id: str | None = None

    @property
    def message(self) -> str:
        """One line naming every file concerned and the reason."""
        return f"{', '.join(str(p) for p in self.paths)}: {self.reason}"


@dataclass(frozen=True)
class CaseFolder:
    """What :func:`list_case_folder` found: ``cases`` (id -> channel files in order) and every other entry."""

    folder: Path
    cases: dict[str, tuple[Path, ...]]
    issues: tuple[InputIssue, ...] = field(default=())

    @property
    def num_files(self) -> int:
        return sum(len(p) for p in self.cases.values()) + sum(len(i.paths) for i in self.issues)


def ambiguous_message(case_id: str, paths, channel: int | None = None, with_names: bool = False) -> str:
    """The one wording for 'several files claim one case' (predict, check and evaluate).

    ``with_names``: name the files in the message (when it is not already prefixed with them).
    """
    paths = [Path(p) for p in paths]
    what = f"case '{case_id}'" + (f" channel {channel}" if channel is not None else "")
    who = "both" if len(paths) == 2 else f"all {len(paths)}"
    names = f" ({' and '.join(p.name for p in paths)})" if with_names else ""
    hint = ""
    if channel == 0 and any(_CHANNEL.match(_stem(p.name)) for p in paths) and \
            any(not _CHANNEL.match(_stem(p.name)) for p in paths):
        hint = f" (for a one-channel model {case_id}<ending> and {case_id}_0000<ending> are the same case)"
    fix = "rename or remove one of them (neither is used)" if len(paths) == 2 else \
        "rename or remove all but one (none of them is used)"
    return f"ambiguous: {who} files{names} name {what}{hint}; {fix}"


def _stem(name: str) -> str:
    e = ending_of(name)
    return name[: -len(e)] if e else name


def _split(name: str, num_channels: int) -> tuple[str, int] | None:
    """``(case id, channel)`` of an image file name, or None when it does not fit the model's channels."""
    e = ending_of(name)
    stem = name[: -len(e)] if e else name
    m = _CHANNEL.match(stem)
    if m:
        return m["case"], int(m["ch"])
    if num_channels == 1:
        return stem, 0
    return None


def _is_data_file(p: Path, names: set[str]) -> str | None:
    """The detached header (``x.mhd``/``x.nhdr``) next to ``p`` whose data file it is, or None."""
    low = p.name.lower()
    for e in _DATA_ENDINGS:
        if low.endswith(e):
            stem = p.name[: -len(e)]
            for h in DETACHED_ENDINGS:
                for cand in (stem + h, stem + h.upper()):
                    if cand in names:
                        return cand
    return None


def list_case_folder(folder: str | Path, num_channels: int, exclude: tuple[Path, ...] = ()) -> CaseFolder:
    """Sort every entry of ``folder`` (not recursive) into cases to predict and reasons for the rest.

    ``exclude``: entries that are not inputs (e.g. the output folder when it lies inside the input folder);
    they are reported as skipped folders. Raises :class:`Seg3dError` when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise Seg3dError("input folder not found" if not folder.exists() else "not a folder", folder)
    issues: list[InputIssue] = []
    claims: dict[tuple[str, int], list[Path]] = defaultdict(list)
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise Seg3dError(f"cannot list the input folder ({e.strerror or e})", folder) from None
    names = {p.name for p in entries}
    for p in entries:
        if p.name.startswith("."):
            issues.append(InputIssue("skipped", "hidden", (p,), "hidden file"))
        elif p.is_dir():
            why = "the output folder" if p in exclude else "a folder (only files directly in the input folder are read)"
            issues.append(InputIssue("skipped", "folder", (p,), why))
        elif not p.is_file():
            issues.append(InputIssue("failed", "unreadable", (p,), "not a readable file (a broken link?)"))
        elif ending_of(p.name) is None:
            header = _is_data_file(p, names)
            if header:
                issues.append(InputIssue("skipped", "data file", (p,), f"data file of {header}"))
            else:
                issues.append(InputIssue("skipped", "not an image", (p,), "not an image (the ending is not one "
                                         f"of {', '.join(SUPPORTED_ENDINGS)})"))
        else:
            key = _split(p.name, num_channels)
            if key is None:
                issues.append(InputIssue("failed", "name", (p,), f"the name does not follow <case>_XXXX"
                                         f"{ending_of(p.name)} (the model has {num_channels} channels)"))
            else:
                claims[key].append(p)
    by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    bad_cases: dict[str, list[Path]] = defaultdict(list)
    for (cid, ch), paths in sorted(claims.items()):
        if len(paths) > 1:
            issues.append(InputIssue("failed", "ambiguous", tuple(paths), ambiguous_message(cid, paths, ch), cid))
            bad_cases[cid] += paths
        else:
            by_case[cid][ch] = paths[0]
    cases: dict[str, tuple[Path, ...]] = {}
    want = list(range(num_channels))
    for cid, chans in sorted(by_case.items()):
        paths = tuple(chans[c] for c in sorted(chans))
        if cid in bad_cases:
            issues.append(InputIssue("failed", "ambiguous", paths, f"other file(s) of case '{cid}' are ambiguous "
                                     f"({', '.join(q.name for q in bad_cases[cid])})", cid))
        elif sorted(chans) != want:
            names_ = [f"_{c:04d}" for c in want]
            issues.append(InputIssue("failed", "channels", paths, f"case '{cid}' has channel file(s) "
                                     f"{sorted(chans)}, the model expects exactly {want} "
                                     f"({' '.join(names_)})", cid))
        else:
            cases[cid] = tuple(chans[c] for c in want)
    for group in _case_insensitive_clashes(cases):
        paths = tuple(p for cid in group for p in cases.pop(cid))
        issues.append(InputIssue("failed", "ambiguous", paths, f"case ids {', '.join(repr(c) for c in group)} "
                                 "differ only in letter case: their masks would overwrite each other on macOS and "
                                 "Windows file systems; rename all but one (none of them is used)", group[0]))
    return CaseFolder(folder, cases, tuple(issues))


def _case_insensitive_clashes(cases: dict[str, tuple[Path, ...]]) -> list[list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for cid in cases:
        groups[cid.casefold()].append(cid)
    return [sorted(g) for g in groups.values() if len(g) > 1]
