"""Inference runtimes: each turns a loaded model folder into one :data:`NetworkCall` per fold.

``BACKENDS[name](model, settings) -> list[NetworkCall]``. ``torch`` (:mod:`.torch`): PyTorch eager with
autocast; ``openvino`` (:mod:`.openvino`): the network converted once and run by OpenVINO's CPU plugin. A new
runtime is one module with a factory, registered with :func:`register_backend`.

``auto`` picks torch on CUDA and OpenVINO on the CPU when it is installed: measured faster per window on both
CPU kinds (AVX-512 with native bf16, and AVX2; benchmarks/RESULTS.md, "Inference backends"), in fp32 and in
bf16. Without OpenVINO it falls back to torch and says so in one line (:func:`backend_note`). A bundle
(``seg3d export``) holds converted networks only, so it always runs through OpenVINO.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from seg3d.errors import Seg3dError
from seg3d.progress import LogFn, log_info

if TYPE_CHECKING:
    import torch

    from seg3d.core.bundle import Bundle
    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.core.plan import Configuration, Plan
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.network_call import NetworkCall


@dataclass(frozen=True)
class LoadedModel:
    """What a backend needs to build its network calls: the folder, its plan and the chosen folds, and where
    to report (``log``: e.g. OpenVINO's one-time conversion; default the ``seg3d`` logger)."""

    folder: ModelFolder | Bundle
    plan: Plan
    info: ModelInfo
    config_name: str
    config: Configuration
    folds: tuple[str, ...]
    device: torch.device
    log: LogFn = log_info


BackendFactory = Callable[[LoadedModel, "PredictSettings"], "list[NetworkCall]"]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str):
    """Decorator: ``@register_backend("openvino") def factory(model, settings) -> list[NetworkCall]``."""
    def deco(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        return factory

    return deco


def resolve_backend(name: str, model: LoadedModel | None = None) -> str:
    """The backend ``name`` stands for on ``model``'s device.

    ``auto``: torch on CUDA; on the CPU OpenVINO when installed, else torch; a bundle: OpenVINO.

    Raises:
        Seg3dError: an unknown name; ``openvino`` without the runtime installed; ``torch`` for a bundle.
    """
    _load_builtin()
    from seg3d.inference.backends import openvino as ov_backend

    bundle = model is not None and _is_bundle(model)
    if name == "auto":
        if bundle:
            name = "openvino"
        elif model is not None and model.device.type != "cpu":
            return "torch"
        else:
            return "openvino" if ov_backend.available() else "torch"
    if name not in BACKENDS:
        raise Seg3dError(f"unknown inference backend '{name}' (choose from auto, {', '.join(BACKENDS)})")
    if name == "openvino":
        ov_backend.require()
    if bundle and name != "openvino":
        raise Seg3dError(f"a bundle holds networks converted for OpenVINO, not torch checkpoints: use --backend "
                         f"auto or openvino (or predict from the model folder with --backend {name})",
                         model.folder.path)
    return name


def backend_note(name: str, model: LoadedModel | None = None) -> str | None:
    """The one line to print when ``auto`` falls back to torch on the CPU (``None`` otherwise)."""
    from seg3d.inference.backends import openvino as ov_backend

    if name != "auto" or model is None or model.device.type != "cpu" or _is_bundle(model):
        return None
    if ov_backend.available():
        return None
    return ("note: OpenVINO is not installed, predicting with torch on the CPU (pip install 'seg3d[openvino]' "
            "for faster CPU inference)")


def _is_bundle(model: LoadedModel) -> bool:
    from seg3d.core.bundle import Bundle

    return isinstance(model.folder, Bundle)


def make_network_calls(model: LoadedModel, settings: PredictSettings) -> list[NetworkCall]:
    """One network call per fold of ``model``, from the backend ``settings.backend`` names."""
    return BACKENDS[resolve_backend(settings.backend, model)](model, settings)


def _load_builtin() -> None:
    from seg3d.inference.backends import openvino as _openvino  # noqa: F401  registers "openvino"
    from seg3d.inference.backends import torch as _torch  # noqa: F401  registers "torch"
