"""Measuring a training step: the bytes in tensors it needs (benchmarks/bench.py and support/compare.py count alike).

Peak memory = static_bytes(model, method, optimizer) (unique storages of weights, buffers, the method and the optimizer
state) + transient_peak(step) (the peak allocated during one step above what was allocated before it). Tensor bytes,
not the process's RSS: the same number on any machine, and comparable between CPU and CUDA.
"""
import contextlib
import itertools
import os
import sys
import tempfile

import torch


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def static_bytes(*objs):
    """Unique storages of modules' parameters and buffers and of optimizers' state."""
    seen = {}
    for o in objs:
        ts = [t for s in o.state.values() for t in s.values()] if isinstance(o, torch.optim.Optimizer) \
            else itertools.chain(o.parameters(), o.buffers())
        for t in ts:
            if torch.is_tensor(t):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def without_profiler_notices():
    """PyTorch's CPU profiler writes "USDT:... profiler_start/stop" lines to the process's stderr (file descriptor 2,
    below Python): hold fd 2 in a temporary file for the block and pass on every other line."""
    sys.stderr.flush()
    saved, tmp = os.dup(2), tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2), os.close(saved)
        tmp.seek(0)
        rest = [line for line in tmp.read().decode(errors="replace").splitlines(True) if not line.startswith("USDT:")]
        tmp.close()
        sys.stderr.write("".join(rest))


def transient_peak(step, device):
    """Peak bytes allocated during step() above what was allocated before it."""
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        sync(device)
        return torch.cuda.max_memory_allocated() - start
    from torch._C._profiler import _EventType  # torch has no CPU allocator statistics: replay the allocations
    with without_profiler_notices(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                            profile_memory=True) as prof:
        step()
    events, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        e = todo.pop()
        todo += e.children
        if e.tag == _EventType.Allocation:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    return max(itertools.accumulate(s for _, s in sorted(events)), default=0)
