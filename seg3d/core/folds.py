"""The one fold parser, shared by ``seg3d train`` and ``seg3d predict`` (and the Python API)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from seg3d.errors import Seg3dError

ALL_AVAILABLE = "all-available"


def parse_folds(values: str | int | Iterable[str | int] | None) -> Literal["all-available"] | list[str]:
    """Fold names from what a user typed: numbers, ``all`` (the fold trained on every case) or
    ``all-available`` (every fold with a checkpoint; also ``all_available`` or nothing at all).

    Accepts ``"0,1,2"``, ``"0 1 2"``, ``["0", "1"]``, ``[0, 1]``, ``3``. Returns ``"all-available"`` or the
    fold names in the given order without repeats, e.g. ``["0", "1", "all"]``.

    Raises:
        Seg3dError: anything else, naming the value.
    """
    if values is None:
        return ALL_AVAILABLE
    items = [values] if isinstance(values, (str, int)) else list(values)
    parts = [p for v in items for p in str(v).replace(",", " ").split()]
    if not parts or parts in (["all-available"], ["all_available"]):
        return ALL_AVAILABLE
    out: list[str] = []
    for p in parts:
        if not (p.isdigit() or p == "all"):
            raise Seg3dError(f"folds are fold numbers (0 1 2 or 0,1,2), 'all' or 'all-available', got '{p}'")
        name = str(int(p)) if p.isdigit() else p
        if name not in out:
            out.append(name)
    return out
