"""The loader: shapes and dtypes, determinism as a function of (seed, rank, epoch, iteration), prefetch, errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seg3d.data import AugmentationParams, make_loader


def _equal(a, b):
    return torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_batches_have_contract_shapes_and_dtypes(small_fg_source, tiny_plan):
    cfg = tiny_plan.config("3d_fullres")
    loader = make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, cfg, batch_size=3, seed=1)
    batches = list(loader.epoch(0, 3))
    assert len(batches) == 3
    for b in batches:
        assert b["image"].shape == (3, 1, *cfg.patch_size) and b["image"].dtype == torch.float32
        assert b["label"].shape == (3, 1, *cfg.patch_size) and b["label"].dtype == torch.int64
        assert set(torch.unique(b["label"]).tolist()) <= {0, 1, 2}
        assert (b["label"][-1] > 0).any()  # the forced sample keeps foreground through augmentation
    assert loader.last_wait_s >= 0 and loader.reset_wait() >= loader.last_wait_s


def test_same_seed_same_batches_and_exact_resume(small_fg_source, tiny_plan):
    mk = lambda seed, rank=0: make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, "3d_fullres",
                                          seed=seed, rank=rank, world_size=2)
    full = list(mk(5).epoch(2, 4))
    again = list(mk(5).epoch(2, 4))
    resumed = list(mk(5).epoch(2, 4, start=2))  # a resume at iteration 2 of epoch 2
    assert all(_equal(a, b) for a, b in zip(full, again))
    assert _equal(full[2], resumed[0]) and _equal(full[3], resumed[1]) and len(resumed) == 2
    assert not _equal(full[0], full[1])
    assert not _equal(full[0], next(iter(mk(6).epoch(2, 1))))
    assert not _equal(full[0], next(iter(mk(5, rank=1).epoch(2, 1))))  # each DDP rank draws its own patches


def test_no_augmentation_and_2d(small_fg_source, tiny_plan):
    cfg2d = dataclasses.replace(tiny_plan.config("3d_fullres"), name="2d", patch_size=(32, 32), slice_axis=0,
                                mirror_axes=(0, 1), anisotropic_axis=None)
    loader = make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, cfg2d, batch_size=2, augment=None)
    b = loader.batch(0, 0)
    assert b["image"].shape == (2, 1, 32, 32) and b["label"].shape == (2, 1, 32, 32)
    assert loader.region == (32, 32)


def test_errors_in_the_background_reach_the_consumer(tiny_plan):
    class Broken:
        def load(self, case_id):
            raise OSError(f"cannot read {case_id}")

    loader = make_loader(Broken(), ["a"], tiny_plan, "3d_fullres", augment=AugmentationParams())
    with pytest.raises(OSError, match="cannot read a"):
        list(loader.epoch(0, 2))


def test_worker_processes_give_the_same_batches(small_fg_source, tiny_plan):
    kw = {"batch_size": 2, "seed": 3, "timeout_s": 60}
    thread = list(make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, "3d_fullres", **kw).epoch(0, 2))
    procs = make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, "3d_fullres", workers=1, **kw)
    assert all(_equal(a, b) for a, b in zip(thread, procs.epoch(0, 2)))
    assert all(_equal(a, b) for a, b in zip(thread[1:], procs.epoch(0, 2, start=1)))  # persistent workers, reused


def test_endless_epoch_can_be_closed_early(small_fg_source, tiny_plan):
    loader = make_loader(small_fg_source, small_fg_source.case_ids, tiny_plan, "3d_fullres", seed=2)
    it = loader.epoch(1)  # no length: the trainer takes what it needs and closes it
    first = [next(it) for _ in range(3)]
    it.close()
    assert _equal(first[2], loader.batch(1, 2))
