"""Write a bundle (layout in :mod:`seg3d.core.bundle`) from a trained model folder.

A network exported without its preprocessing and post-processing is not worth having (nnU-Net issues
#1730, #2407): the bundle carries the plan (spacing, normalization, patch, mirror axes, labels), the
post-processing decision, the predict defaults (step, TTA) and one network per fold in a runtime format,
with the seg3d and runtime versions and a sha256 for every file. ``seg3d predict -m BUNDLE`` runs it through
OpenVINO with the same preprocessing, sliding window, TTA, fold averaging, revert and post-processing as
the model folder, so its masks equal the model folder's OpenVINO masks (tests/export/test_export.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from seg3d.core.bundle import BUNDLE_FORMATS, Bundle, BundleManifest, network_files, sha256_file
from seg3d.core.model_folder import ModelFolder
from seg3d.errors import Seg3dError


def export_bundle(model_dir: str | Path, out_dir: str | Path, fmt: str = "openvino",
                  folds: str | Sequence[str] = "all-available", checkpoint: str = "final",
                  log: Callable[[str], None] | None = None) -> Bundle:
    """Export ``model_dir``'s folds to a new bundle folder ``out_dir`` and return it (checked).

    Args:
        model_dir: a model folder written by ``seg3d train``.
        out_dir: the bundle folder to create; it must not exist yet (or be empty). Written in a temporary
            folder beside it and renamed into place, so a killed export leaves nothing half-written.
        fmt: ``openvino`` (OpenVINO IR, fp32 weights) or ``onnx`` (opset 17; needs the ``onnx`` package).
        folds: fold names or ``all-available``; checkpoint: ``final``, ``best`` or ``latest``.

    Raises:
        Seg3dError: unknown format, missing folds or checkpoints, an existing non-empty ``out_dir``, a
            missing runtime.
    """
    from seg3d import __version__
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.backends import openvino as ovb

    if fmt not in BUNDLE_FORMATS:
        raise Seg3dError(f"--format must be one of {', '.join(BUNDLE_FORMATS)}, got '{fmt}'")
    ovb.require()
    if fmt == "onnx":
        _require_onnx()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Seg3dError("the bundle folder exists and is not empty (choose a new folder)", out)
    model = _load_model(model_dir, PredictSettings(folds=folds, checkpoint=checkpoint, device="cpu"))
    defaults = PredictSettings()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = _copy_json(model.folder, tmp)
        (tmp / network_files(fmt, "0")[0]).parent.mkdir(parents=True, exist_ok=True)
        for fold in model.folds:
            if log is not None:
                log(f"fold {fold}: converting the network to {fmt}")
            _write_network(model, fold, checkpoint, fmt, tmp)
            files += list(network_files(fmt, fold))
        versions = {"torch": torch.__version__.split("+")[0], "openvino": ovb.runtime_version()}
        if fmt == "onnx":
            import onnx

            versions["onnx"] = onnx.__version__
        manifest = BundleManifest(
            format=fmt, config=model.config_name, folds=tuple(model.folds), step=defaults.step,
            tta=defaults.tta, mirror_axes=tuple(model.config.mirror_axes),
            patch_size=tuple(model.config.patch_size), labels=dict(model.plan.labels),
            channel_names=tuple(model.plan.channel_names), seg3d_version=__version__, runtime_versions=versions,
            source_weights_sha256=model.folder.weights_checksum(model.folds, checkpoint), checkpoint=checkpoint,
            files={rel: sha256_file(tmp / rel) for rel in files})
        from seg3d.atomic import write_json_atomic

        write_json_atomic(tmp / Bundle(tmp).manifest_json.name, manifest.to_dict())
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Bundle(out).require()


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise Seg3dError("--format onnx needs the onnx package: pip install 'seg3d[openvino]' (or onnx)") from None


def _load_model(model_dir, settings):
    """The model folder as the backends see it (plan, configuration, folds), on the CPU."""
    from seg3d.inference.predictor import load_model

    return load_model(ModelFolder(model_dir).require(), settings)


def _copy_json(folder: ModelFolder, dst: Path) -> list[str]:
    copied = []
    for src in (folder.plans_json, folder.model_json, folder.postprocessing_json):
        if src.is_file():
            shutil.copy2(src, dst / src.name)
            copied.append(src.name)
    return copied


def _write_network(model, fold: str, checkpoint: str, fmt: str, dst: Path) -> None:
    from seg3d.inference.backends import openvino as ovb
    from seg3d.inference.backends.torch import load_fold_network

    net = load_fold_network(model, fold, checkpoint).eval()
    rel = network_files(fmt, fold)
    if fmt == "openvino":
        import openvino as ov

        ir = ovb.convert_network(net, model.plan.num_channels, model.config.patch_size)
        ov.save_model(ir, str(dst / rel[0]), compress_to_fp16=False)
        return
    ndim = len(model.config.patch_size)
    example = torch.zeros((2, model.plan.num_channels, *model.config.patch_size))
    axes = {0: "batch", **{2 + i: f"d{i}" for i in range(ndim)}}
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(dst / rel[0]), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes}, opset_version=17)
