"""Batch runners: where and in which order the batch stages (:mod:`seg3d.inference.stages`) run.

``local`` (threads on this machine: read ahead, write behind). A runner for a cluster is one more module
reusing the same stages, so ``--continue``, atomic writes, the manifest and the exit status stay identical.
"""
