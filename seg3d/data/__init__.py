"""Training data: patch sampling with foreground oversampling, batched augmentation, the background loader."""
from seg3d.data.augmentation import (
                                     AUGMENTATION_PRESETS,
                                     AugmentationParams,
                                     augment_batch,
                                     augmentation_preset,
                                     region_size,
)
from seg3d.data.loader import PatchLoader, make_loader
from seg3d.data.sampling import sample_batch, sample_patch

__all__ = [
           "AUGMENTATION_PRESETS",
           "AugmentationParams",
           "PatchLoader",
           "augment_batch",
           "augmentation_preset",
           "make_loader",
           "region_size",
           "sample_batch",
           "sample_patch",
]
