"""Training throughput: seg3d's trainer vs nnU-Net v2's ``nnUNetTrainer`` on the same plan, CPU, side by side.

Same work per iteration in both tools: nnU-Net's own 3d_fullres plan for the dataset (patch, batch, topology,
features) is turned into a seg3d plan (``common.seg3d_plan_from_nnunet``), so both train the same network on
batches of the same size. Each tool runs in its own fresh process; repetitions are interleaved.

- nnU-Net: ``nnUNetTrainer(plans, "3d_fullres", 0, dataset_json, device=cpu)``, ``on_train_start()`` (its
  data-augmentation worker processes: nnU-Net's default count), then ``next(dataloader_train)`` +
  ``train_step`` per iteration (what its epoch loop does; fp32 on CPU, as nnU-Net always runs there).
- seg3d: ``seg3d.training.train`` (the real trainer: loader, augmentation, loss, clipping) for one epoch of
  ``warmup + iters`` iterations; a progress callback stamps every finished iteration.

Reported: median seconds per iteration over the timed iterations (the first ``--warmup`` are dropped),
seconds per iteration waiting for data, and the speed-up (nnU-Net s/it over seg3d s/it).

Usage (nnU-Net preprocesses the dataset into WORK on the first run):
  .venv/bin/python benchmarks/bench_train.py --nnunet-bin /work/nnunet-venv/bin --iters 8 --reps 2
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import REPO, base_parser, dataset_id, run_timed, seg3d_plan_from_nnunet

NNUNET_STEPS = r'''
import json, sys, time, os
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
pre, n, warm, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
plans = json.load(open(os.path.join(pre, "nnUNetPlans.json")))
plans["continue_training"] = False  # what run_training adds
ds = json.load(open(os.path.join(pre, "dataset.json")))
tr = nnUNetTrainer(plans, "3d_fullres", 0, ds, device=torch.device("cpu"))
tr.on_train_start()
tr.network.train()
steps, waits = [], []
for i in range(warm + n):
    t0 = time.perf_counter()
    b = next(tr.dataloader_train)
    t1 = time.perf_counter()
    tr.train_step(b)
    t2 = time.perf_counter()
    steps.append(t2 - t0); waits.append(t1 - t0)
json.dump({"steps": steps[warm:], "waits": waits[warm:], "torch": torch.__version__,
           "threads": torch.get_num_threads(), "da_procs": tr.dataloader_train.num_processes
           if hasattr(tr.dataloader_train, "num_processes") else None}, open(out, "w"))
import multiprocessing
for p in multiprocessing.active_children():  # its augmentation workers (they would hold our stdout open)
    p.terminate()
os._exit(0)  # skip nnU-Net's end-of-training (checkpoint, validation)
'''

SEG3D_STEPS = r'''
import json, sys, time
import torch
from seg3d.core.device import set_threads
from seg3d.training import train
set_threads(None)  # what the CLI does (train itself leaves the threads to its caller)
plan_dir, n, warm, out, model_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
compile_model = len(sys.argv) > 6 and sys.argv[6] == "compile"
stamps, lines = [], []
def progress(done, total, msg):
    stamps.append(time.perf_counter())
t_start = time.perf_counter()
train(plan_dir, fold=0, model_dir=model_dir, epochs=1, iters_per_epoch=warm + n, device="cpu",
      validate=False, val_batches=1, progress=progress, log=lines.append, compile=compile_model)
steps = [b - a for a, b in zip(stamps, stamps[1:])][warm - 1:]
import csv
row = list(csv.DictReader(open(f"{model_dir}/fold_0/log.csv")))[-1]
json.dump({"steps": steps, "data_wait_share": float(row["data_wait"]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "log": lines}, open(out, "w"))
'''


def prepare_nnunet(ds: Path, work: Path, nnunet_bin: Path, workers: int) -> tuple[Path, dict]:
    """nnU-Net's plan and preprocessed data for ``ds`` in ``work`` (made once, reused)."""
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not (raw / ds.name).exists():
        (raw / ds.name).symlink_to(ds.resolve())
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"))
    pre = work / "pre" / ds.name
    if not (pre / "nnUNetPlans_3d_fullres").is_dir():
        run_timed([str(nnunet_bin / "nnUNetv2_plan_and_preprocess"), "-d", dataset_id(ds), "-c", "3d_fullres",
                   "-np", str(workers)], env)
    return pre, env


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per run")
    ap.add_argument("--warmup", type=int, default=2, help="iterations dropped at the start of each run")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_train"))
    ap.add_argument("--also-compile", action="store_true", help="also time seg3d train --compile (the compilation "
                    "falls in the warm-up iterations)")
    a = ap.parse_args()
    if a.nnunet_bin is None:
        sys.exit("--nnunet-bin is required (the comparison needs nnU-Net's plan)")
    work = a.work
    pre, env = prepare_nnunet(a.dataset, work, a.nnunet_bin, a.workers)
    nn_plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset = json.loads((pre / "dataset.json").read_text())
    from seg3d.core.plan_folder import PlanFolder

    plan = seg3d_plan_from_nnunet(nn_plans, dataset)
    plan_folder = PlanFolder(work / "seg3d_plan")
    plan.save(plan_folder.plans_json)
    plan_folder.record_dataset(a.dataset.resolve())
    cfg = plan.config("3d_fullres")
    print(f"plan (both tools): patch {cfg.patch_size}, batch {cfg.batch_size}, features "
          f"{cfg.topology.features}", flush=True)
    (work / "nn_steps.py").write_text(NNUNET_STEPS)
    (work / "s3_steps.py").write_text(SEG3D_STEPS)
    tools = ["seg3d", "nnunet"] + (["seg3d_compile"] if a.also_compile else [])
    res: dict[str, list] = {t: [] for t in tools}
    for rep in range(a.reps):
        for tool in tools if rep % 2 == 0 else tools[::-1]:
            out = work / f"{tool}_{rep}.json"
            if tool == "nnunet":
                cmd = [str(a.nnunet_bin / "python"), str(work / "nn_steps.py"), str(pre), str(a.iters),
                       str(a.warmup), str(out), str(a.threads)]
            else:
                model_dir = work / f"s3_model_{tool}_{rep}"
                subprocess.run(["rm", "-rf", str(model_dir)], check=True)
                cmd = [str(REPO / ".venv" / "bin" / "python"), str(work / "s3_steps.py"), str(work / "seg3d_plan"),
                       str(a.iters), str(a.warmup), str(out), str(model_dir),
                       "compile" if tool == "seg3d_compile" else "eager"]
            wall = run_timed(cmd, env if tool == "nnunet" else None)
            r = json.loads(out.read_text())
            r["wall_s"] = wall
            res[tool].append(r)
            print(f"rep {rep} {tool}: median {statistics.median(r['steps']):.2f} s/it "
                  f"(min {min(r['steps']):.2f}, max {max(r['steps']):.2f}), process {wall:.0f} s", flush=True)
    summary = {}
    for tool, runs in res.items():
        steps = [s for r in runs for s in r["steps"]]
        summary[tool] = {"s_per_it_median": statistics.median(steps), "s_per_it_min": min(steps),
                         "torch": runs[0]["torch"], "threads": runs[0]["threads"]}
    summary["nnunet"]["data_wait_s_per_it"] = statistics.median(w for r in res["nnunet"] for w in r["waits"])
    summary["nnunet"]["da_procs"] = res["nnunet"][0].get("da_procs")
    summary["seg3d"]["data_wait_share"] = statistics.median(r["data_wait_share"] for r in res["seg3d"])
    summary["seg3d"]["setup"] = next((line for line in res["seg3d"][0]["log"] if "precision" in line), "")
    summary["speedup"] = summary["nnunet"]["s_per_it_median"] / summary["seg3d"]["s_per_it_median"]
    if "seg3d_compile" in summary:
        summary["speedup_compile"] = (summary["nnunet"]["s_per_it_median"]
                                      / summary["seg3d_compile"]["s_per_it_median"])
    summary["settings"] = {"iters": a.iters, "warmup": a.warmup, "reps": a.reps, "patch": cfg.patch_size,
                           "batch": cfg.batch_size, "features": cfg.topology.features}
    print(json.dumps(summary, indent=2))
    (work / "result.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
