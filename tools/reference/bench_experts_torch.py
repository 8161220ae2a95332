#!/usr/bin/env python3
"""PyTorch's grouped GEMMs of the routed experts on the shapes of `troupe bench experts`.

torch._grouped_mm in BF16 (what transformers' DeepSeek-V3 runs with its grouped_mm experts):
tokens x top-k rows routed uniformly at random over the experts (sorted by expert), gate+up as one
[E, 2I, H] weight and down as [E, H, I]; forward, and backward (dgrad and wgrad together, from
autograd) as (forward + backward) - forward. Median of CUDA-event timings after 5 warm-ups.
troupe's figures include rounding its f32 operands to BF16; PyTorch's operands are BF16 already.

    troupe bench experts --device cuda:0 --config topologies/models/small/config.json
    python3 tools/reference/bench_experts_torch.py --config topologies/models/small/config.json
"""
import argparse
import json

import torch

from cuda_timing import times_ms  # tools/reference/cuda_timing.py



def median(values):
    return values[len(values) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="topologies/models/small/config.json")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--iterations", type=int, default=20)
    a = parser.parse_args()
    config = json.load(open(a.config))
    experts, top_k = config["n_routed_experts"], config["num_experts_per_tok"]
    hidden, inter = config["hidden_size"], config["moe_intermediate_size"]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    choice = torch.rand(a.tokens, experts, device=dev).topk(top_k, dim=1).indices.flatten()
    counts = torch.bincount(choice, minlength=experts)
    offs = counts.cumsum(0).to(torch.int32)
    rows = a.tokens * top_k
    bf16 = torch.bfloat16

    def layer(n, k):
        x = torch.randn(rows, k, device=dev, dtype=bf16, requires_grad=True)
        w = torch.randn(experts, n, k, device=dev, dtype=bf16, requires_grad=True)
        dy = torch.randn(rows, n, device=dev, dtype=bf16)
        forward = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)

        def both():
            y = forward()
            torch.autograd.grad(y, (x, w), dy)

        fwd = median(times_ms(forward, a.iterations))
        total = median(times_ms(both, a.iterations))
        return fwd, total - fwd

    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: {a.tokens} tokens x "
          f"top-{top_k} over {experts} experts (hidden {hidden}, expert intermediate {inter}), "
          f"BF16, medians of {a.iterations} runs")
    print(f"{'pass':<15} {'ms':>10} {'TFLOP/s':>10}")
    total = 0.0
    for name, n, k in (("gate+up", 2 * inter, hidden), ("down", hidden, inter)):
        fwd, bwd = layer(n, k)
        flops = 2.0 * rows * n * k
        print(f"{name + ' fprop':<15} {fwd:>10.3f} {flops / fwd / 1e9:>10.1f}")
        print(f"{name + ' backward':<15} {bwd:>10.3f} {2 * flops / bwd / 1e9:>10.1f}")
        total += fwd + bwd
    print(f"{'one layer':<15} {total:>10.3f}")


if __name__ == "__main__":
    main()
