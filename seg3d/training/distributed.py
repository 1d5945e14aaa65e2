"""torch.distributed plumbing for runs launched by ``torchrun``.

torchrun's launcher protocol sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (and the rendezvous address); a
plain ``seg3d train`` sees none of them and runs as one process. gloo on CPU, nccl on CUDA. Rank 0 writes
checkpoints and logs; every rank draws its own patches (the loader is seeded with the rank).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# torch imported inside the functions that use it: `seg3d --help`, `seg3d check` and `seg3d plan` stay fast


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


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched with several processes."""
    import torch
    import torch.distributed as dist

    info = launcher_info()
    if info.enabled and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def wrap_ddp(net, info: DistInfo, device):
    if not info.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_float(value: float, info: DistInfo) -> float:
    """Rank 0's value on every rank (so all ranks take the same time-budget decision)."""
    if not info.enabled:
        return value
    import torch
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
