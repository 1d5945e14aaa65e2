"""Memory per stage of one case through the seg3d Predictor, in-process: where a backend's peak comes from.

Runs read -> preprocess -> network (sliding window) -> export (revert, argmax) on one image with the Predictor,
polling the process's RSS every 10 ms, and prints after each stage the RSS and the peak since the previous
mark. Run it once per backend, each in a fresh process. This is the probe behind RESULTS' issue-12 change 5
(OpenVINO's buffers held through the revert).

    .venv/bin/python benchmarks/bench_stage_memory.py --model /tmp/s6_ct_static/model \\
        --image /tmp/s6_ct_static/in/ct_0000.nii.gz --backend openvino
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import psutil
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model folder (bench_large_ct.py makes one)")
    ap.add_argument("--image", required=True, help="one single-channel image the model can read")
    ap.add_argument("--backend", default="openvino", choices=["openvino", "torch"])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--tta", action="store_true")
    a = ap.parse_args()
    import SimpleITK as sitk

    from seg3d.inference.predictor import Predictor
    from seg3d.io.image import Geometry

    proc = psutil.Process()
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=poll, daemon=True).start()
    marks = []

    def mark(stage: str) -> None:
        rss = proc.memory_info().rss
        marks.append({"stage": stage, "rss_gb": round(rss / 2**30, 3), "peak_gb": round(max(peak[0], rss) / 2**30, 3)})
        print(json.dumps(marks[-1]), flush=True)
        peak[0] = 0

    mark("start")
    pred = Predictor(a.model, folds=["0"], device="cpu", backend=a.backend, precision=a.precision, tta=a.tta,
                     postprocess=False)
    mark("loaded")
    img = sitk.ReadImage(a.image)
    data = sitk.GetArrayFromImage(img).astype(np.float32)[None]
    mark("read")
    pdata, props = pred.preprocess(data, Geometry.from_sitk(img))
    del data
    mark("preprocessed")
    probs = pred.predict_preprocessed(pdata)
    mark("network")
    pred.export(probs, props)
    mark("export")
    done.set()
    print(json.dumps({"backend": a.backend, "precision": a.precision, "tta": a.tta,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "marks": marks}))


if __name__ == "__main__":
    main()
