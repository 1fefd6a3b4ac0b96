"""Data-parallel training under torchrun: `torchrun --nproc_per_node N train.py ...` (NCCL on GPUs, gloo on CPUs).

Every process holds the whole frozen model and the same method. Each global micro-batch (--batch-size examples) is
split among the processes, each computes its share of the step's loss (its response tokens over the step's tokens
on all processes, so the sum is the single-process loss), and the method's gradients are summed across processes
before clipping and the optimizer step: every process then makes the same update, as one process would. The method
is tiny, so one all-reduce per step costs little. Process 0 alone prints, evaluates and writes files.

No run hangs: every collective waits at most --dist-timeout seconds (default 600; gloo/NCCL's own default is 30
minutes) for the other processes, then this process stops with one line naming the likely cause (a process stuck
or gone); torchrun then stops the others. SIGTERM on any process stops all of them at the same step, after
process 0 has saved a checkpoint (train.py asks every process whether one was signalled).

A plain `python train.py` gets `Single()`, whose methods do nothing. This is not model sharding: the frozen model
must fit on one GPU (for larger models see FSDP, README "Scale out").
"""
import functools
import os
from datetime import timedelta

import torch
import torch.distributed as dist


class Single:
    """One process: nothing to split or reduce."""
    rank, world, is_main = 0, 1, True

    def shard(self, items: list) -> list:
        return items

    def sum(self, x: float) -> float:
        return x

    def all_reduce_grads(self, params):
        pass

    def count(self, n: int):
        pass

    def summary(self) -> str:
        return ""

    def barrier(self):
        pass

    def close(self):
        pass


def bounded(collective):
    """A collective that waited past the process group's timeout raises one ConnectionError line (not a traceback)."""
    @functools.wraps(collective)
    def wrapped(self, *args):
        try:
            return collective(self, *args)
        except RuntimeError as e:  # torch's DistBackendError (a RuntimeError): a timeout, or a peer that died
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConnectionError(f"torchrun process {self.rank}: no answer from the other processes within "
                                  f"--dist-timeout {self.timeout}s (a process is stuck or gone): {first}") from None
    return wrapped


class DataParallel(Single):
    """Process `rank` of `world`, started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""

    def __init__(self, device: str, timeout: int = 600):
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))  # every collective waits at most this
        self.rank, self.world, self.timeout = dist.get_rank(), dist.get_world_size(), timeout
        self.is_main, self.examples, self.device = self.rank == 0, 0, device

    def shard(self, items: list) -> list:
        """This process's share of a global micro-batch: items rank, rank + world, ... (sizes differ by at most 1)."""
        return items[self.rank::self.world]

    @bounded
    def sum(self, x: float) -> float:
        """x summed over the processes (a count or a loss)."""
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    @bounded
    def all_reduce_grads(self, params):
        """Sum every gradient over the processes (a process with no examples in a micro-batch adds zeros)."""
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])  # one all-reduce for the whole (small) method
        dist.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def count(self, n: int):
        self.examples += n

    @bounded
    def summary(self) -> str:
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([self.examples], device=self.device))
        return f"data parallel: {self.world} processes; training examples per process: {[int(c) for c in counts]}"

    @bounded
    def barrier(self):
        dist.barrier()

    @bounded
    def close(self):
        dist.barrier()  # every process done with every collective first: gloo could abort one torn down mid-exchange
        dist.destroy_process_group()


def setup(cfg) -> Single:
    """DataParallel under torchrun (WORLD_SIZE > 1), else Single. On GPUs each process takes cuda:LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Single()
    if cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return DataParallel(cfg.device, cfg.dist_timeout)
