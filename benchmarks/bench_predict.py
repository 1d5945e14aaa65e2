"""Inference benchmark: `seg3d predict` vs `nnUNetv2_predict_from_modelfolder` with the SAME weights.

Fair comparison = identical network and weights in both tools. The script builds a seg3d model folder whose
plan matches nnU-Net's own hippocampus plan (read from nnU-Net's nnUNetPlans.json: patch, topology,
spacing, z-score), takes its fold-0 weights (a trained seg3d checkpoint via --seg3d-model, otherwise a
seeded random initialisation), and converts them into an nnU-Net results folder (PlainConvUNet: same
conv–InstanceNorm–LeakyReLU stages and transposed convolutions; the conv biases nnU-Net adds in front of
InstanceNorm are set to zero, which the normalisation cancels anyway). Then both tools predict the same
cases, interleaved repetitions, CPU, with the same TTA setting; reported: seconds per case (wall clock of
the whole command, model loading included), peak RSS of the process tree (psutil polling every 50 ms),
Dice of each against the reference labels, and voxel agreement between the two tools.

Usage (needs nnU-Net's plan for Dataset004: nnUNetv2_plan_and_preprocess -d 4 --no_pp -c 3d_fullres):
  .venv/bin/python benchmarks/bench_predict.py --nnunet-bin /work/nnunet-venv/bin \
      --nnunet-plans /tmp/f_nn/pre/Dataset004_Hippocampus --cases 20 --reps 2 --work /tmp/bench_predict
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, seg3d_plan_from_nnunet

DATA = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"

CONVERT = r'''
import re, sys, torch
src, template_args, dst = sys.argv[1], sys.argv[2], sys.argv[3]
import json
from dynamic_network_architectures.architectures.unet import PlainConvUNet
a = json.loads(template_args)
net = PlainConvUNet(a["in"], a["stages"], a["features"], torch.nn.Conv3d, a["kernels"], a["strides"],
                    [2] * a["stages"], a["classes"], [2] * (a["stages"] - 1), True, torch.nn.InstanceNorm3d,
                    {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
                    deep_supervision=True)
s3 = torch.load(src, map_location="cpu", weights_only=False)["model"]
out = {}
for k, v in net.state_dict().items():
    m = k[len("decoder."):] if k.startswith("decoder.encoder.") else k
    m = m.replace(".all_modules.0.", ".conv.").replace(".all_modules.1.", ".norm.")
    g = re.match(r"encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$", m) or \
        re.match(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$", m)
    if g:
        part = "encoder" if m.startswith("encoder") else "decoder"
        i, j, kind, wb = g.groups()
        if kind == "conv" and wb == "bias":
            out[k] = torch.zeros_like(v); continue
        key = f"{part}.{i}.conv{int(j)+1}.conv.weight" if kind == "conv" else f"{part}.{i}.norm{int(j)+1}.{wb}"
    elif m.startswith("decoder.transpconvs."):
        d, wb = m.split(".")[2:4]
        if wb == "bias":
            out[k] = torch.zeros_like(v); continue
        key = f"ups.{d}.weight"
    elif m.startswith("decoder.seg_layers."):
        key = "heads." + ".".join(m.split(".")[2:])
    else:
        raise SystemExit(f"unmapped key {k}")
    assert s3[key].shape == v.shape, (k, key)
    out[k] = s3[key].clone()
net.load_state_dict(out)
torch.save({"network_weights": out, "init_args": {"configuration": "3d_fullres"},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}, dst)
'''


def nnunet_plans_like(nn_plans: dict, plan) -> dict:
    """nnU-Net's plans with its 3d_fullres network, patch and spacing replaced by the seg3d plan's."""
    out = json.loads(json.dumps(nn_plans))
    c, cfg = out["configurations"]["3d_fullres"], plan.config("3d_fullres")
    topo = cfg.topology
    c.update(patch_size=list(cfg.patch_size), batch_size=cfg.batch_size, spacing=list(cfg.spacing))
    ak = c["architecture"]["arch_kwargs"]
    n = topo.num_stages
    ak.update(n_stages=n, features_per_stage=list(topo.features), kernel_sizes=[list(k) for k in topo.kernel_sizes],
              strides=[list(s) for s in topo.strides], n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    return out


def build_models(work: Path, nn_plans_dir: Path, nnunet_bin: Path, seg3d_model: Path | None) -> tuple[Path, Path]:
    """A seg3d and an nnU-Net model folder holding the same network and weights.

    With ``seg3d_model`` (a trained seg3d model folder): its plan and fold-0 weights, and nnU-Net's plans with
    that network. Without: nnU-Net's own plan and a seeded random initialisation.
    """
    import torch

    from seg3d.core.model_folder import ModelFolder, ModelInfo
    from seg3d.nets import build_network

    nn_plans = json.loads((nn_plans_dir / "nnUNetPlans.json").read_text())
    dataset = json.loads((DATA / "dataset.json").read_text())
    s3 = work / "seg3d_model"
    shutil.rmtree(s3, ignore_errors=True)
    folder = ModelFolder(s3)
    folder.fold_dir(0).mkdir(parents=True)
    ckpt = folder.checkpoint_path(0)
    if seg3d_model is not None:
        plan = ModelFolder(seg3d_model).load_plan()
        nn_plans = nnunet_plans_like(nn_plans, plan)
        shutil.copy(ModelFolder(seg3d_model).checkpoint_path(0), ckpt)
    else:
        plan = seg3d_plan_from_nnunet(nn_plans, dataset)
        torch.manual_seed(0)
        net = build_network(plan.config("3d_fullres"), plan.num_channels, plan.num_classes)
        torch.save({"model": net.state_dict(), "arch": "unet", "config": "3d_fullres",
                    "num_classes": plan.num_classes}, ckpt)
    folder.save_plan(plan)
    folder.save_info(ModelInfo(config="3d_fullres"))
    nn = work / "nnunet_model"
    (nn / "fold_0").mkdir(parents=True, exist_ok=True)
    (nn / "plans.json").write_text(json.dumps(nn_plans, indent=2))
    for name in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(nn_plans_dir / name, nn / name)
    c = nn_plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    args = {"in": plan.num_channels, "stages": c["n_stages"], "features": c["features_per_stage"],
            "kernels": c["kernel_sizes"], "strides": c["strides"], "classes": plan.num_classes}
    script = work / "convert.py"
    script.write_text(CONVERT)
    subprocess.run([str(nnunet_bin / "python"), str(script), str(ckpt), json.dumps(args),
                    str(nn / "fold_0" / "checkpoint_final.pth")], check=True)
    return s3, nn


def run_tree(cmd: list[str], env=None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GB) of the process and all its children, exit code."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return time.perf_counter() - t0, peak / 1e9, proc.returncode


def dice_scores(pred_dir: Path, ids: list[str]) -> tuple[float, float]:
    from seg3d.io.image import read_image

    d = {1: [], 2: []}
    for cid in ids:
        p = read_image(pred_dir / f"{cid}.nii.gz").array
        r = read_image(DATA / "labelsTr" / f"{cid}.nii.gz").array
        for c in d:
            tot = np.count_nonzero(p == c) + np.count_nonzero(r == c)
            d[c].append(2 * np.count_nonzero((p == c) & (r == c)) / tot if tot else np.nan)
    return float(np.nanmean(d[1])), float(np.nanmean(d[2]))


def agreement(a_dir: Path, b_dir: Path, ids: list[str]) -> float:
    from seg3d.io.image import read_image

    same = tot = 0
    for cid in ids:
        a, b = read_image(a_dir / f"{cid}.nii.gz").array, read_image(b_dir / f"{cid}.nii.gz").array
        same += int(np.count_nonzero(a == b))
        tot += a.size
    return same / tot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnunet-bin", type=Path, default=Path("/work/nnunet-venv/bin"))
    ap.add_argument("--nnunet-plans", type=Path, required=True, help="nnU-Net preprocessed dataset folder "
                    "holding nnUNetPlans.json, dataset.json, dataset_fingerprint.json")
    ap.add_argument("--seg3d-model", type=Path, default=None, help="trained seg3d model folder (fold_0)")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--also-fast", action="store_true", help="also time `seg3d predict --fast` and score it")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_predict"))
    a = ap.parse_args()
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    s3_model, nn_model = build_models(work, a.nnunet_plans, a.nnunet_bin, a.seg3d_model)
    if a.seg3d_model is not None and (a.seg3d_model / "splits.json").is_file():
        # the trained fold's validation cases: never seen in training
        ids = sorted(json.loads((a.seg3d_model / "splits.json").read_text())[0]["val"])[:a.cases]
    else:  # random weights: any cases
        ids = sorted(p.name[:-len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))[-a.cases:]
    in_dir = work / "input"
    in_dir.mkdir(exist_ok=True)
    for cid in ids:
        link = in_dir / f"{cid}_0000.nii.gz"
        if not link.exists():
            link.symlink_to(DATA / "imagesTr" / f"{cid}_0000.nii.gz")
    env = dict(os.environ, nnUNet_raw=str(work), nnUNet_preprocessed=str(work), nnUNet_results=str(work))
    tta = [] if not a.no_tta else ["--no-tta"]
    nn_tta = [] if not a.no_tta else ["--disable_tta"]
    rows: dict[str, list] = {"seg3d": [], "nnunet": [], **({"seg3d_fast": []} if a.also_fast else {})}
    for rep in range(a.reps):
        order = ["seg3d", "nnunet"] if rep % 2 == 0 else ["nnunet", "seg3d"]
        for tool in order + (["seg3d_fast"] if a.also_fast else []):
            out = work / f"out_{tool}"
            shutil.rmtree(out, ignore_errors=True)
            if tool.startswith("seg3d"):
                cmd = [str(REPO / ".venv" / "bin" / "seg3d"), "predict", "-i", str(in_dir), "-o", str(out),
                       "-m", str(s3_model), "--folds", "0", "--device", "cpu", "--no-postprocess",
                       *(["--fast"] if tool == "seg3d_fast" else tta)]
            else:
                cmd = [str(a.nnunet_bin / "nnUNetv2_predict_from_modelfolder"), "-i", str(in_dir), "-o",
                       str(out), "-m", str(nn_model), "-f", "0", "-device", "cpu", *nn_tta]
            sec, gb, rc = run_tree(cmd, env)
            rows[tool].append((sec, gb, rc))
            print(f"rep {rep} {tool}: {sec:.1f} s ({sec / len(ids):.2f} s/case), peak RSS {gb:.2f} GB, rc {rc}",
                  flush=True)
    res = {}
    for tool in rows:
        secs = [r[0] for r in rows[tool] if r[2] == 0]
        res[tool] = {"s_per_case": min(secs) / len(ids) if secs else None,
                     "peak_gb": max(r[1] for r in rows[tool]),
                     "dice": dice_scores(work / f"out_{tool}", ids)}
    res["agreement"] = agreement(work / "out_seg3d", work / "out_nnunet", ids)
    res["speedup"] = res["nnunet"]["s_per_case"] / res["seg3d"]["s_per_case"]
    res["memory_ratio"] = res["seg3d"]["peak_gb"] / res["nnunet"]["peak_gb"]
    res["settings"] = {"cases": len(ids), "reps": a.reps, "tta": not a.no_tta,
                       "weights": str(a.seg3d_model) if a.seg3d_model else "random init (seed 0)"}
    print(json.dumps(res, indent=2))
    (work / "result.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
