"""Shared CLI plumbing: error display, rich progress bars, tables."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from seg3d.errors import Seg3dError

console = Console(stderr=True)
out = Console()

_DEBUG = {"on": False}


def set_debug(on: bool) -> None:
    _DEBUG["on"] = on


def guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a :class:`Seg3dError` is printed without a traceback and exits with status 1."""
    try:
        return fn()
    except Seg3dError as e:
        if _DEBUG["on"]:
            raise
        from rich.markup import escape  # a message may hold brackets: seg3d[ray], a file "scan[1].nii.gz"

        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar as a ``progress(done, total, message)`` callback.

    When stderr is not a terminal (redirected to a log), prints plain lines at ~10% steps instead.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not console.is_terminal:
        last = {"pct": -1}

        def plain(done: int, total: int, message: str = "") -> None:
            pct = int(100 * done / max(total, 1))
            if pct // 10 != last["pct"] // 10 or done == total:
                last["pct"] = pct
                console.print(f"{description}: {done}/{total} {message}", highlight=False)

        yield plain
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[msg]}"),
                  console=console, transient=False) as prog:
        task = prog.add_task(description, total=None, msg="")

        def update(done: int, total: int, message: str = "") -> None:
            prog.update(task, completed=done, total=total, msg=message)

        yield update
