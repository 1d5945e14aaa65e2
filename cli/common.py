"""Shared CLI plumbing: error display, rich progress bars, tables."""
from __future__ import annotations

import logging
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


class _ConsoleHandler(logging.Handler):
    """Log records of the library (the ``seg3d`` logger, and Python warnings) as console lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name == "py.warnings":  # "file:line: UserWarning: text\n  source line": the text is enough
            msg = "warning: " + msg.split("Warning: ", 1)[-1].splitlines()[0]
        style = "yellow" if record.levelno >= logging.WARNING else None
        console.print(msg, style=style, highlight=False, soft_wrap=True, markup=False)


def setup_logging() -> None:
    """The one logging path of the CLI: library log lines and warnings go to the console (idempotent)."""
    logging.captureWarnings(True)
    for name in ("seg3d", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
            logger.addHandler(_ConsoleHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


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


def deprecated(old: str, new: str) -> None:
    """Note that an old option spelling still works for this release only."""
    console.print(f"[yellow]note:[/] {old} is deprecated and will be removed in the next release; use {new}",
                  highlight=False)


def fold_values(values: list[str] | None, extra_args: list[str]) -> list[str]:
    """``--folds 0 1 2``: typer takes one value per option, the others arrive as extra arguments (numbers,
    ``all``, ``all-available``); anything else there is a usage error."""
    import typer

    known = [a for a in extra_args if a.replace(",", "").isdigit() or a in ("all", "all-available")]
    stray = [a for a in extra_args if a not in known]
    if stray:
        console.print(f"[bold red]error:[/] unexpected argument(s): {' '.join(stray)}")
        raise typer.Exit(2)
    return list(values or []) + known


THREADS_HELP = "CPU threads for the network (default: every core this process may use)."
