"""Inference runtimes: each turns a loaded model folder into one :data:`NetworkCall` per fold.

``BACKENDS[name](model, settings) -> list[NetworkCall]``. ``torch`` (:mod:`.torch`) is today's runtime and
what ``auto`` picks. A new runtime is one module with a factory, registered with :func:`register_backend`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from seg3d.errors import Seg3dError

if TYPE_CHECKING:
    import torch

    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.core.plan import Configuration, Plan
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.network_call import NetworkCall


@dataclass(frozen=True)
class LoadedModel:
    """What a backend needs to build its network calls: the folder, its plan and the chosen folds."""

    folder: ModelFolder
    plan: Plan
    info: ModelInfo
    config_name: str
    config: Configuration
    folds: tuple[str, ...]
    device: torch.device


BackendFactory = Callable[[LoadedModel, "PredictSettings"], "list[NetworkCall]"]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str):
    """Decorator: ``@register_backend("openvino") def factory(model, settings) -> list[NetworkCall]``."""
    def deco(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        return factory

    return deco


def resolve_backend(name: str, model: LoadedModel | None = None) -> str:
    """The backend ``name`` stands for (``auto``: ``torch`` today). Raises Seg3dError for an unknown name."""
    _load_builtin()
    if name == "auto":
        return "torch"
    if name not in BACKENDS:
        raise Seg3dError(f"unknown inference backend '{name}' (choose from auto, {', '.join(BACKENDS)})")
    return name


def make_network_calls(model: LoadedModel, settings: PredictSettings) -> list[NetworkCall]:
    """One network call per fold of ``model``, from the backend ``settings.backend`` names."""
    return BACKENDS[resolve_backend(settings.backend, model)](model, settings)


def _load_builtin() -> None:
    from seg3d.inference.backends import torch as _torch  # noqa: F401  registers "torch"
