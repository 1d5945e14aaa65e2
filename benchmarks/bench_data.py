"""Data pipeline and network cost on a real plan: is augmentation a small fraction of a training step?

Builds (or reuses) a plan and a preprocessing cache, then, interleaving repetitions, times per batch:
sampling only, sampling + augmentation (``PatchLoader.batch``), and one training step (forward + backward +
SGD) of the planned UNet on that batch; also prints parameters and GFLOPs per patch of UNet and UNet++.
Only seg3d is measured (no nnU-Net side by side here).

    .venv/bin/python benchmarks/bench_data.py --dataset ../shared/data/Dataset004_Hippocampus \
        --work /tmp/seg3d_bench_data --preset cpu --reps 10
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--work", required=True, help="folder for plan and cache (reused when present)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from seg3d.core.plan import Plan
    from seg3d.data import AugmentationParams, make_loader
    from seg3d.losses import build_loss
    from seg3d.nets import build_network
    from seg3d.nets.flops import network_cost
    from seg3d.planning.planner import plan_dataset
    from seg3d.preprocessing.cache import CaseCache, build_cache

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    plan_path = work / "plans.json"
    plan = Plan.load(plan_path) if plan_path.is_file() else plan_dataset(args.dataset, work, preset=args.preset,
                                                                         workers=2)
    cfg = plan.config(args.config)
    cache_dir = work / f"cache_{args.config}"
    t0 = time.perf_counter()
    build_cache(args.dataset, plan, args.config, cache_dir, workers=2)
    print(f"cache ready in {time.perf_counter() - t0:.1f} s: {cache_dir}")
    cache = CaseCache(cache_dir)
    print(f"{args.config}: patch {cfg.patch_size}, batch {cfg.batch_size}, precision {cfg.precision}, "
          f"anisotropic_axis {cfg.anisotropic_axis}")
    for arch in ("unet", "unetpp"):
        print(f"{arch}: {network_cost(build_network(cfg, plan.num_channels, plan.num_classes, arch), plan.num_channels, cfg.patch_size)}")

    plain = make_loader(cache, cache.case_ids, plan, cfg, augment=None, seed=0)
    aug = make_loader(cache, cache.case_ids, plan, cfg, augment=AugmentationParams(), seed=0)
    print(f"augmentation region {aug.region} for patch {cfg.patch_size}")
    net = build_network(cfg, plan.num_channels, plan.num_classes, "unet").train()
    loss_fn = build_loss("ce_dice", plan.num_classes, batch_dice=cfg.batch_dice)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    amp = {"bf16": torch.bfloat16}.get(cfg.precision)

    def step(b):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = net(b["image"])
        out = [o.float() for o in out]
        loss = loss_fn(out, b["label"])
        loss.backward()
        opt.step()

    step(aug.batch(0, 0))  # warm-up
    times = {"sample": [], "sample+augment": [], "train step": []}
    for i in range(1, args.reps + 1):  # interleaved
        t = time.perf_counter()
        plain.batch(0, i)
        times["sample"].append(time.perf_counter() - t)
        t = time.perf_counter()
        b = aug.batch(0, i)
        times["sample+augment"].append(time.perf_counter() - t)
        t = time.perf_counter()
        step(b)
        times["train step"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>16}: median {med[k] * 1000:8.1f} ms  (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f})")
    print(f"data (sample+augment) / train step = {med['sample+augment'] / med['train step']:.3f}")


if __name__ == "__main__":
    main()
