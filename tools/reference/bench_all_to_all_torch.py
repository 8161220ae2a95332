#!/usr/bin/env python3
"""NCCL's own all-to-all through torch.distributed on the bytes of `troupe bench dispatch`.

One process per GPU (torch.multiprocessing), the NCCL backend, all_to_all_single of uint8
buffers split evenly over the ranks: the dispatch's bytes (tokens x top-k rows of hidden FP8
codes plus one FP32 scale per 128) and the combine's (the same rows in BF16). Each iteration is
timed on the host from its call to torch.cuda.synchronize(), as troupe's are; the median of each
rank, the slowest rank's printed; GB/s counts the bytes sent to other GPUs (one GPU: to itself). No casts: this
is the wire alone, the floor for troupe's dispatch and combine, which include them.

    troupe bench dispatch --gpus N
    python3 tools/reference/bench_all_to_all_torch.py --gpus N
"""
import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_ms(body, iterations):
    for _ in range(3):
        body()
    torch.cuda.synchronize()
    out = []
    for _ in range(iterations):
        start = time.perf_counter()
        body()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1e3)
    return sorted(out)[len(out) // 2]


def rank_main(rank, a, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=a.gpus, device_id=torch.device("cuda", rank))
    rows = a.tokens * a.topk
    tiles = (a.hidden + 127) // 128
    figures = {}
    for step, row_bytes in (("dispatch", a.hidden + 4 * tiles), ("combine", 2 * a.hidden)):
        total = rows * row_bytes
        per_rank = total // a.gpus
        send = torch.randint(0, 255, (per_rank * a.gpus,), dtype=torch.uint8, device="cuda")
        receive = torch.empty_like(send)
        ms = timed_ms(lambda: dist.all_to_all_single(receive, send), a.iterations)
        # The bytes that cross to other GPUs (on one GPU: to itself), as troupe counts them.
        figures[step] = (ms, per_rank * max(1, a.gpus - 1))
    gathered = [None] * a.gpus
    dist.all_gather_object(gathered, figures)
    if rank == 0:
        print(f"torch.distributed all_to_all_single (NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
              f"torch {torch.__version__}): {a.gpus} GPU{'s' if a.gpus > 1 else ''}, per GPU "
              f"{a.tokens} tokens x top-{a.topk} rows, hidden {a.hidden}; medians of {a.iterations}, "
              "the slowest rank's")
        print(f"{'step':<22} {'median ms':>10} {'MB to others':>14} {'GB/s per GPU':>18}")
        for step, label in (("dispatch", "dispatch (fp8 bytes)"), ("combine", "combine (bf16 bytes)")):
            ms = max(g[step][0] for g in gathered)
            nbytes = gathered[0][step][1]
            print(f"{label:<22} {ms:>10.3f} {nbytes / 1e6:>14.1f} {nbytes / (ms * 1e6):>18.1f}")
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    a = parser.parse_args()
    mp.spawn(rank_main, args=(a, free_port()), nprocs=a.gpus, join=True)


if __name__ == "__main__":
    main()
