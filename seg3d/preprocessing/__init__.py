"""Preprocessing shared by training and inference: crop, resample, normalize, cache."""
