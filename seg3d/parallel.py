"""The one process pool: ``map_cases`` runs a function over cases in worker processes, with progress.

Used by the dataset checks and fingerprint, the preprocessing cache and the evaluation. Workers get one
thread each for torch and SimpleITK (:func:`worker_init`): the processes are the parallelism, extra threads
would only compete on a small machine.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from seg3d.progress import ProgressFn, report


def worker_init(_: Any = None) -> None:
    """One intra-op thread per worker process for the libraries already imported (torch, SimpleITK).

    Also usable as a ``torch.utils.data.DataLoader`` ``worker_init_fn`` (it ignores the worker id).
    """
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "SimpleITK" in sys.modules:
        sys.modules["SimpleITK"].ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def context():
    """fork starts a worker in milliseconds (spawn re-imports numpy/SimpleITK/torch: seconds per worker) and
    lets workers inherit what the parent imported; it is used on Linux, where workers run numpy/SimpleITK/torch
    code only. Elsewhere (macOS, Windows) spawn is the safe choice."""
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def map_cases(fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None,
              progress: ProgressFn | None = None, message: str | Callable[[Any], str] = "",
              chunksize: int | None = None, serial_up_to: int = 1) -> list[Any]:
    """``[fn(item) for item in items]`` over worker processes, in order, reporting progress per item.

    Args:
        fn: picklable (a module-level function or a ``functools.partial`` of one). Exceptions raised in a
            worker reach the caller; :class:`seg3d.errors.Seg3dError` does not survive pickling intact, so
            functions that raise it should return the message instead.
        workers: ``None``: all cores; 0 or 1: in this process.
        message: the progress message, or a function of each result giving it.
        chunksize: items per round trip (default: small chunks that keep the bar moving).
        serial_up_to: run in this process when there are at most this many items.
    """
    n = len(items)
    workers = os.cpu_count() or 1 if workers is None else workers
    workers = max(0, min(workers, n))

    def say(res) -> str:
        return message(res) if callable(message) else message

    out: list[Any] = []
    report(progress, 0, n, "" if callable(message) else message)
    if workers <= 1 or n <= serial_up_to:
        for i, item in enumerate(items):
            out.append(fn(item))
            report(progress, i + 1, n, say(out[-1]))
        return out
    if chunksize is None:  # >1 amortizes the inter-process round trips
        chunksize = max(1, min(8, n // (workers * 8)))
    with ProcessPoolExecutor(workers, mp_context=context(), initializer=worker_init) as ex:
        for i, res in enumerate(ex.map(fn, items, chunksize=chunksize)):
            out.append(res)
            report(progress, i + 1, n, say(res))
    return out
