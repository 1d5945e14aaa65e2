"""Checkpoints: written atomically (temp file, fsync, rename) so a kill never leaves an unloadable file.

Read back with :meth:`seg3d.core.model_folder.ModelFolder.load_checkpoint` (the one loader).
``checkpoint_latest.pt`` holds everything a resume needs: weights, optimizer, grad scaler, RNG states, the
schedule position (epoch, step, elapsed seconds) and the EMA/best pseudo-Dice.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from seg3d.atomic import atomic_path

# torch imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def unwrap(net):
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return getattr(net, "module", net)


def rng_state() -> dict[str, Any]:
    import torch

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(states: dict[str, Any]) -> None:
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
