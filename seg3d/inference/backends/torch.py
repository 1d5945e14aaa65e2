"""The torch runtime: each fold's checkpoint loaded into the network its plan describes."""
from __future__ import annotations

import torch

from seg3d.errors import Seg3dError
from seg3d.inference.backends import LoadedModel, register_backend
from seg3d.inference.network_call import TorchNetwork
from seg3d.nets import build_network


@register_backend("torch")
def torch_network_calls(model: LoadedModel, settings) -> list[TorchNetwork]:
    """A :class:`~seg3d.inference.network_call.TorchNetwork` per fold, on ``model.device`` in
    ``settings.precision``. Raises :class:`Seg3dError` naming the checkpoint when it does not fit the plan."""
    return [TorchNetwork(load_fold_network(model, fold, settings.checkpoint), model.device, settings.precision)
            for fold in model.folds]


def load_fold_network(model: LoadedModel, fold: str, kind: str = "final") -> torch.nn.Module:
    """The fold's network in eval mode on the model's device, its weights checked against the plan."""

    path = model.folder.checkpoint_path(fold, kind)
    ckpt = model.folder.load_checkpoint(path)
    plan = model.plan
    arch = ckpt.get("arch", model.info.arch)
    num_classes = int(ckpt.get("num_classes", plan.num_classes))
    if num_classes != plan.num_classes:
        raise Seg3dError(f"checkpoint predicts {num_classes} classes but the plan declares "
                         f"{plan.num_classes}", path)
    cfg_name = ckpt.get("config")
    if isinstance(cfg_name, str) and cfg_name != model.config_name:
        raise Seg3dError(f"checkpoint was trained for configuration '{cfg_name}', not "
                         f"'{model.config_name}'", path)
    net = build_network(model.config, plan.num_channels, num_classes, arch=arch,
                        deep_supervision=model.info.deep_supervision)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise Seg3dError(f"weights do not fit the network the plan describes ({str(e).splitlines()[0]})",
                         path) from None
    net.eval().to(model.device)
    if model.device.type == "cuda":
        net.to(memory_format=torch.channels_last_3d if model.config.ndim == 3 else torch.channels_last)
    return net
