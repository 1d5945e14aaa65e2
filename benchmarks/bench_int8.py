"""int8 post-training quantization (NNCF) of a seg3d network, checked as issue 12 checks every precision.

Issue 12 offers int8 "via post-training quantization (NNCF, calibrated on training cases) only if it passes the
same agreement check" as bf16: >= 99.9% of voxels identical to torch fp32 and Dice within 0.002. This script
tries it on a trained model folder's fold 0:

1. The fold's network is converted with seg3d's own OpenVINO conversion (``find_or_convert``, the cached IR
   ``seg3d predict --backend openvino`` uses).
2. Calibration windows: ``--calib-cases`` TRAINING cases of fold 0 (spread evenly over ``splits.json``'s train
   list) are preprocessed and run through seg3d's sliding window with mirroring TTA exactly as ``seg3d predict``
   feeds the network, by seg3d's own ``openvino_int8.calibration_windows``: a recording ``NetworkCall`` keeps a
   uniform sample (seed 0) of ``--calib-windows`` of the windows, which calibrate ``nncf.quantize``.
3. One quantized network per ``--quant`` variant (NNCF settings, see ``QUANT_VARIANTS``), saved as IR in
   ``--work`` and reused by a later run with the same weights, variant and calibration.
4. The fold-0 VALIDATION cases are predicted with torch fp32 (the reference), OpenVINO fp32 and bf16 (where the
   CPU has native bf16) and every int8 variant, all through the seg3d Predictor (the int8 network enters through
   the ``NetworkCall`` seam as an ``OpenVinoNetwork``), fold 0, mirroring TTA, step 0.5, no post-processing,
   variants interleaved case by case in one process (``bench_precision.compare_variants``).

A variant ``NAME@bf16`` runs the int8 network with OpenVINO's bf16 inference precision for the operations left
unquantized (``@fp32``, the default, keeps them in fp32).

Usage:
  flock /tmp/seg3d-bench.lock .venv/bin/python benchmarks/bench_int8.py --model MODEL_DIR --cases 39 \\
      --calib-cases 20 --calib-windows 300 --quant performance,mixed --work /tmp/int8 --json out.json
Needs ``pip install nncf`` (not a seg3d dependency).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_precision import compare_variants
from common import REPO, validation_cases

from seg3d.core.device import cpu_has_fast_bf16
from seg3d.inference.backends import openvino as ovb
from seg3d.inference.backends import openvino_int8 as q8
from seg3d.inference.predictor import Predictor

# NNCF settings tried (Calibration fields, and NNCF's fast or full bias correction). performance: the default
# preset (symmetric int8 weights and activations); mixed: asymmetric activations (the inputs and the
# InstanceNorm/LeakyReLU outputs are not centred on zero); full-bc: NNCF's full bias correction instead of the
# fast one; keep-ends: the first and the last convolution stay in float (input intensities and logits are the
# most sensitive tensors). mixed-keep-ends with 20 cases and 300 windows is what `seg3d predict --precision int8`
# ships (seg3d.inference.backends.openvino_int8.DEFAULT_CALIBRATION).
QUANT_VARIANTS = {
    "performance": ({"preset": "performance", "keep_ends": False}, True),
    "mixed": ({"preset": "mixed", "keep_ends": False}, True),
    "mixed-full-bc": ({"preset": "mixed", "keep_ends": False}, False),
    "keep-ends": ({"preset": "performance", "keep_ends": True}, True),
    "mixed-keep-ends": ({"preset": "mixed", "keep_ends": True}, True),
    "mixed-keep-ends-full-bc": ({"preset": "mixed", "keep_ends": True}, False),
}


def calibration_windows(model_dir: Path, dataset: Path, calib: q8.Calibration) -> list[np.ndarray]:
    """The product's calibration windows (:func:`q8.calibration_windows`) for fold 0 of ``model_dir``, with the
    cases read from ``dataset``."""
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.predictor import load_model
    from seg3d.io.layout import load_dataset

    model = load_model(model_dir, PredictSettings(folds=["0"]))
    ids = set(q8.spread(model.folder.training_cases("0"), calib.cases))
    cases = [c for c in load_dataset(dataset).cases if c.case_id in ids]
    windows = q8.calibration_windows(model, cases, calib)
    print(f"calibration: {len(windows)} windows from {len(cases)} training cases", flush=True)
    return windows


def fp32_ir(model_dir: Path) -> ovb.CachedNetwork:
    """Fold 0's network as seg3d's OpenVINO backend converts and caches it."""
    from seg3d.core.settings import PredictSettings
    from seg3d.inference.backends.torch import load_fold_network
    from seg3d.inference.predictor import load_model

    settings = PredictSettings(folds=["0"], backend="openvino", precision="fp32")
    model = load_model(model_dir, settings)
    checksum = model.folder.weights_checksum(["0"], settings.checkpoint)
    return ovb.find_or_convert(checksum, lambda: load_fold_network(model, "0", settings.checkpoint),
                               model.plan.num_channels, model.config.patch_size,
                               [model.folder.conversion_cache_dir(ovb.NAME), ovb.user_cache_dir()])


def quantize(xml: Path, windows: list[np.ndarray], variant: str, calib: q8.Calibration, out: Path) -> float:
    """Quantize the IR ``xml`` with ``windows`` under ``QUANT_VARIANTS[variant]`` (seg3d's own
    :func:`q8.quantize`), saved as ``out``; returns the seconds it took (0 when ``out`` already exists)."""
    import openvino as ov

    if out.is_file():
        return 0.0
    fields, fast_bc = QUANT_VARIANTS[variant]
    t = time.perf_counter()
    q = q8.quantize(ov.Core().read_model(str(xml)), windows, replace(calib, **fields), fast_bc)
    dt = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return dt


def int8_predictor(model_dir: Path, xml: Path, rest: str) -> Predictor:
    """A seg3d Predictor whose one network call is the int8 IR ``xml`` (unquantized operations in ``rest``)."""
    pred = Predictor(model_dir, folds=["0"], backend="openvino", precision="fp32", postprocess=False)
    pred.networks = [ovb.OpenVinoNetwork(xml, rest, torch.get_num_threads())]
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained seg3d model folder (fold_0, splits.json)")
    ap.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/Dataset004_Hippocampus")
    ap.add_argument("--cases", type=int, default=39, help="fold-0 validation cases to predict")
    ap.add_argument("--calib-cases", type=int, default=20, help="fold-0 training cases to calibrate on")
    ap.add_argument("--calib-windows", type=int, default=300, help="windows drawn from them (NNCF subset_size)")
    ap.add_argument("--quant", default="performance,mixed",
                    help=f"int8 variants, NAME[@fp32|@bf16], NAME in {', '.join(QUANT_VARIANTS)}")
    ap.add_argument("--no-float", action="store_true", help="torch fp32 reference and int8 only")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenVINO threads (default: torch's)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/seg3d-int8"), help="quantized networks go here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import nncf

    calib = q8.Calibration(cases=args.calib_cases, windows=args.calib_windows)
    entry = fp32_ir(args.model)
    checksum = entry.folder.name.split("-")[0]
    specs = [(v.split("@") + ["fp32"])[:2] for v in args.quant.split(",")]
    windows = None
    quant_s = {}
    irs = {}
    for name, _ in specs:
        out = args.work / f"{checksum}-nncf{nncf.__version__}-c{args.calib_cases}w{args.calib_windows}-{q8.SAMPLING}" \
            / name / "network.xml"
        if not out.is_file() and windows is None:
            windows = calibration_windows(args.model, args.dataset, calib)
        quant_s[name] = round(quantize(entry.xml, windows, name, calib, out), 1)
        irs[name] = out
        print(f"int8 {name}: {out} (quantized in {quant_s[name]} s; 0 = reused)", flush=True)

    predictors = {"torch fp32": Predictor(args.model, folds=["0"], backend="torch", precision="fp32",
                                          postprocess=False)}
    precisions = {"torch fp32": "fp32"}
    if not args.no_float:
        floats = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
        for p in floats:
            predictors[f"openvino {p}"] = Predictor(args.model, folds=["0"], backend="openvino", precision=p,
                                                    postprocess=False)
            precisions[f"openvino {p}"] = p
    for name, rest in specs:
        label = f"openvino int8 {name}" + ("" if rest == "fp32" else f"@{rest}")
        predictors[label] = int8_predictor(args.model, irs[name], rest)
        precisions[label] = "int8"
    n, rows = compare_variants(predictors, precisions, validation_cases(args.model, args.dataset, args.cases))
    if "openvino fp32" in rows:
        base = rows["openvino fp32"]["network_s_per_case"]
        for row in rows.values():
            row["network_speedup_vs_openvino_fp32"] = round(base / max(row["network_s_per_case"], 1e-9), 2)
    result = {"cases": n, "reference": "torch fp32", "calibration": {
                  "training_cases": q8.spread(json.loads((args.model / "splits.json").read_text())[0]["train"],
                                          args.calib_cases),
                  "windows": args.calib_windows, "quantize_s": quant_s},
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_fast_bf16(),
              "threads": torch.get_num_threads(), "nncf": nncf.__version__, "openvino": ovb.runtime_version(),
              "variants": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
