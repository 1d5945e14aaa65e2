"""Training batches: sampling + augmentation, produced ahead of the consumer.

Each batch is a pure function of ``(seed, rank, epoch, iteration)`` — its random generator is seeded with
exactly those numbers — so resuming at (epoch, iteration) reproduces the interrupted stream exactly with no
loader state to checkpoint, and each DDP rank draws its own patches (a different stream per rank).

``workers=0`` (default) produces batches in one background thread: numpy slicing, torch augmentation and
memory-mapped reads release the GIL, and on a 2-core machine a thread competes less with the training step
than worker processes do. ``workers>0`` uses torch DataLoader worker processes (1 torch thread each,
``timeout`` so a dead worker raises instead of hanging, persistent across epochs).
``loader.last_wait_s`` / ``loader.wait_s`` tell how long the consumer waited for data (trainer's data-wait share).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from seg3d.core.plan import Configuration, Plan
from seg3d.data.augmentation import AugmentationParams, augment_batch, region_size
from seg3d.data.sampling import CaseSource, sample_batch
from seg3d.parallel import worker_init

_DEFAULT_AUG = AugmentationParams()
_END = object()


class PatchLoader:
    """Batches ``{"image": float32 (B, C, *patch), "label": int64 (B, 1, *patch)}`` (torch, CPU).

    ``batch(epoch, it)`` builds one batch in the calling thread; ``epoch(epoch, num_iterations, start=0)`` is an
    iterator over iterations ``start..num_iterations-1`` produced ahead in the background.
    """

    def __init__(self, source: CaseSource, case_ids: Sequence[str], config: Configuration, batch_size: int,
                 oversample: float = 1 / 3, augment: AugmentationParams | None = _DEFAULT_AUG, workers: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, prefetch: int = 2, timeout_s: float = 300.0,
                 pin_memory: bool | None = None):
        if not case_ids:
            raise ValueError("make_loader needs at least one case id")
        self.source, self.case_ids = source, list(case_ids)
        self.config, self.batch_size, self.oversample = config, int(batch_size), float(oversample)
        self.augment, self.workers, self.seed = augment, int(workers), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.prefetch, self.timeout_s = max(1, int(prefetch)), float(timeout_s)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.patch = tuple(config.patch_size)
        self.region = region_size(self.patch, augment, config.anisotropic_axis)
        self.slice_axis = config.slice_axis if len(self.patch) == 2 else None
        self.last_wait_s = 0.0  # consumer wait for the most recent batch
        self.wait_s = 0.0       # consumer wait summed since the last reset_wait()
        self._dl = None

    # --- one batch, deterministic ---------------------------------------------------------------------
    def rng(self, epoch: int, iteration: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, int(epoch), int(iteration)])

    def batch(self, epoch: int, iteration: int) -> dict[str, torch.Tensor]:
        rng = self.rng(epoch, iteration)
        images, labels = sample_batch(self.source, self.case_ids, self.patch, self.batch_size, rng,
                                      self.oversample, self.region, self.slice_axis)
        image, label = torch.from_numpy(images), torch.from_numpy(labels)
        if self.augment is not None:
            image, label = augment_batch(image, label, self.patch, self.augment, rng, self.config.mirror_axes,
                                         self.config.anisotropic_axis)
        return {"image": image.float().contiguous(), "label": label.long().contiguous()}

    # --- iteration with prefetch ----------------------------------------------------------------------
    def reset_wait(self) -> float:
        w, self.wait_s = self.wait_s, 0.0
        return w

    def epoch(self, epoch: int, num_iterations: int | None = None, start: int = 0
              ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of iterations ``start, start+1, ...`` of ``epoch`` (up to ``num_iterations``; endless when
        None: the consumer stops when it wants and should ``close()`` the iterator to stop the producer)."""
        n = 2 ** 62 if num_iterations is None else int(num_iterations)
        src = self._thread_batches if self.workers <= 0 else self._worker_batches
        it = src(epoch, n, start)
        try:
            while True:
                t0 = time.perf_counter()
                b = next(it, _END)
                self.last_wait_s = time.perf_counter() - t0
                self.wait_s += self.last_wait_s
                if b is _END:
                    return
                yield b
        finally:
            it.close()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless stream (epoch 0, iterations 0, 1, ...): for quick experiments; the trainer uses ``epoch``."""
        return self.epoch(0)

    def _pin(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.pin_memory() for k, v in b.items()} if self.pin_memory else b

    def _thread_batches(self, epoch: int, n: int, start: int):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for i in range(start, n):
                    b = self._pin(self.batch(epoch, i))
                    while not stop.is_set():
                        try:
                            q.put(b, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(_END)
            except BaseException as e:  # surfaced in the consumer, never a silent hang  # noqa: BLE001
                q.put(e)

        t = threading.Thread(target=produce, name="seg3d-loader", daemon=True)
        t.start()
        try:
            while True:
                try:
                    item = q.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise RuntimeError(f"data loader produced nothing for {self.timeout_s:.0f} s") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _worker_batches(self, epoch: int, n: int, start: int):
        if self._dl is None:
            self._keys = _Keys()
            self._dl = torch.utils.data.DataLoader(
                _BatchDataset(self), batch_size=None, sampler=self._keys, num_workers=self.workers,
                worker_init_fn=worker_init, persistent_workers=True, prefetch_factor=self.prefetch,
                pin_memory=self.pin_memory, timeout=self.timeout_s)
        self._keys.keys = (epoch, start, n)
        yield from self._dl


class _Keys(torch.utils.data.Sampler):
    """The (epoch, iteration) keys of the current epoch; reassigned before each pass."""

    def __init__(self):
        self.keys: tuple[int, int, int] = (0, 0, 0)  # epoch, first iteration, end

    def __iter__(self):
        epoch, start, end = self.keys
        return ((epoch, i) for i in range(start, end))

    def __len__(self):
        return self.keys[2] - self.keys[1]


class _BatchDataset(torch.utils.data.Dataset):
    def __init__(self, loader: PatchLoader):
        self.loader = loader

    def __getitem__(self, key):
        return self.loader.batch(*key)


def make_loader(cache: CaseSource, case_ids: Sequence[str], plan: Plan, config: Configuration | str,
                batch_size: int | None = None, oversample: float = 1 / 3,
                augment: AugmentationParams | None = _DEFAULT_AUG, workers: int = 0, seed: int = 0, rank: int = 0,
                world_size: int = 1, **kw) -> PatchLoader:
    """A :class:`PatchLoader` over ``case_ids`` of ``cache`` (anything with ``load(case_id)``).

    ``batch_size`` defaults to the configuration's; ``augment=None`` turns augmentation off (validation).
    Extra keyword options: ``prefetch``, ``timeout_s``, ``pin_memory``.
    """
    cfg = plan.config(config) if isinstance(config, str) else config
    return PatchLoader(cache, case_ids, cfg, batch_size or cfg.batch_size, oversample, augment, workers, seed,
                       rank, world_size, **kw)
