"""Preprocessing shared by training and inference: crop, resample, normalize, cache."""
from seg3d.preprocessing.cache import CaseCache, build_cache
from seg3d.preprocessing.pipeline import (
                                          CaseProperties,
                                          indices_to_labels,
                                          labels_to_indices,
                                          preprocess_case,
                                          revert_to_original,
)

__all__ = [
                                          "CaseCache",
                                          "CaseProperties",
                                          "build_cache",
                                          "indices_to_labels",
                                          "labels_to_indices",
                                          "preprocess_case",
                                          "revert_to_original",
]
