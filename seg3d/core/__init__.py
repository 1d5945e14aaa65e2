"""Contracts: the bottom layer every other part of seg3d codes against.

``plan`` (the plan's typed data), ``device`` (device, precision and threads), ``settings`` (the typed
settings of training and prediction), ``model_folder`` (the one owner of a model folder's file names) and
``folds`` (the one fold parser). Nothing here imports from a layer above (see docs/ARCHITECTURE.md).
"""
