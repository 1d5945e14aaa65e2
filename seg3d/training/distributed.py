"""torch.distributed plumbing for runs launched by ``torchrun``.

torchrun's launcher protocol sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (and the rendezvous address); a
plain ``seg3d train`` sees none of them and runs as a single process. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_info() -> DistInfo:
    """What torchrun told this process (rank 0 of 1 when not launched by it)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def init(device_type: str) -> DistInfo:
    """Join the process group when launched with several processes."""
    import torch
    import torch.distributed as dist

    info = launcher_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def any_true(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank if it is true on any rank (so all ranks stop at the same iteration)."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
