"""Distillation batches: image, reference label and teacher probabilities sampled and augmented together.

The sampler and augmentation are the training ones (:func:`seg3d.data.sampling.sample_aligned`,
:func:`seg3d.data.augmentation.augment_batch` with ``soft=``): the same patch size, foreground oversampling
(a third of each batch forced onto foreground: the label's for labelled cases, the teacher's argmax for
unlabelled ones) and augmentation preset; the teacher's probabilities take the image's rotation, scaling and
mirroring with linear interpolation and no intensity change. A batch is a pure function of (seed, rank,
epoch, iteration), as in :class:`seg3d.data.loader.PatchLoader` (whose background prefetch it reuses), so an
interrupted distillation resumes exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seg3d.data.augmentation import normalize_probabilities
from seg3d.data.loader import PatchLoader
from seg3d.data.sampling import num_forced, sample_aligned
from seg3d.distill.targets import decode, load_targets


class DistillSource:
    """Cases for distillation: ``load(case_id) -> (data, seg, fg, (p, idx), labelled)``.

    Args:
        caches: case id -> the cache holding it (labelled cases: the training cache; unlabelled: theirs).
        labelled: the case ids that have reference labels.
        targets_dir: folder of the teacher targets (:mod:`seg3d.distill.targets`).
    """

    def __init__(self, caches: dict[str, object], labelled: set[str], targets_dir: str | Path, num_classes: int):
        self.caches, self.labelled = dict(caches), set(labelled)
        self.targets_dir, self.num_classes = Path(targets_dir), int(num_classes)

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.caches)

    def load(self, case_id: str):
        data, seg, fg = self.caches[case_id].load(case_id)
        p, idx, teacher_fg = load_targets(self.targets_dir, case_id)
        labelled = case_id in self.labelled
        if tuple(p.shape[1:]) != tuple(data.shape[1:]):
            from seg3d.errors import Seg3dError

            raise Seg3dError(f"teacher targets of '{case_id}' have shape {p.shape[1:]}, the cached image "
                             f"{data.shape[1:]}: delete the targets folder to recompute them", self.targets_dir)
        return data, seg, fg if labelled else teacher_fg, (p, idx), labelled


def sample_distill_batch(source: DistillSource, case_ids: Sequence[str], patch, batch_size: int,
                         rng: np.random.Generator, oversample: float = 1 / 3, region=None, slice_axis=None):
    """``(images (B, C, *region) float32, labels (B, 1, *region) int16, soft (B, K, *region) float32,
    labelled (B,) bool)``: :func:`seg3d.data.sampling.sample_batch` with the teacher's probabilities."""
    forced = num_forced(batch_size, oversample)
    images, labels, softs, flags = [], [], [], []
    for b in range(batch_size):
        cid = case_ids[int(rng.integers(len(case_ids)))]
        data, seg, fg, (p, idx), labelled = source.load(cid)
        arrays = [(data, 0), (seg, 0), (p, 0)] + ([(idx, 0)] if idx is not None else [])
        got = sample_aligned(arrays, fg, patch, rng, force_fg=b >= batch_size - forced, region=region,
                             slice_axis=slice_axis)
        images.append(got[0].astype(np.float32, copy=False))
        labels.append(got[1].astype(np.int16, copy=False))
        softs.append(decode(got[2], got[3] if idx is not None else None, source.num_classes))
        flags.append(labelled)
    return np.stack(images), np.stack(labels), np.stack(softs), np.asarray(flags, bool)


class DistillLoader(PatchLoader):
    """Batches ``{"image", "label", "soft" float32 (B, K, *patch), "labelled" bool (B,)}`` (torch, CPU)."""

    def batch(self, epoch: int, iteration: int) -> dict[str, torch.Tensor]:
        rng = self.rng(epoch, iteration)
        images, labels, softs, flags = sample_distill_batch(self.source, self.case_ids, self.patch,
                                                            self.batch_size, rng, self.oversample, self.region,
                                                            self.slice_axis)
        image, label, soft = torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(softs)
        if self.augment is not None:
            image, label, soft = augment_batch_soft(image, label, soft, self.patch, self.augment, rng,
                                                    self.config.mirror_axes, self.config.anisotropic_axis)
        else:
            soft = normalize_probabilities(soft)
        return {"image": image.float().contiguous(), "label": label.long().contiguous(),
                "soft": soft.float().contiguous(), "labelled": torch.from_numpy(flags)}


def augment_batch_soft(image, label, soft, patch, params, rng, mirror_axes, anisotropic_axis):
    from seg3d.data.augmentation import augment_batch

    return augment_batch(image, label, patch, params, rng, mirror_axes, anisotropic_axis, soft=soft)


def make_distill_loader(source: DistillSource, case_ids: Sequence[str], config, batch_size: int | None = None,
                        augment=None, workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                        oversample: float = 1 / 3) -> DistillLoader:
    """A :class:`DistillLoader` over ``case_ids`` (labelled and unlabelled) of ``source``."""
    return DistillLoader(source, case_ids, config, batch_size or config.batch_size, oversample, augment, workers,
                         seed, rank, world_size)
