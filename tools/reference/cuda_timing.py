"""CUDA-event timings shared by the PyTorch reference benchmarks (bench_*_torch.py)."""
import torch


def times_ms(body, iterations):
    """Milliseconds of each of `iterations` runs of `body` after 5 warm-ups, sorted."""
    for _ in range(5):
        body()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for s, e in zip(starts, ends):
        s.record()
        body()
        e.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
