#!/usr/bin/env python3
"""PyTorch's causal attention on the shapes of `troupe bench attention`, on the same GPU.

torch.nn.functional.scaled_dot_product_attention in BF16 (what transformers' DeepSeek-V3 runs
with attn_implementation="sdpa"), forward and forward + backward, once with the backend PyTorch
picks and once per backend that accepts the shapes (flash needs v as wide as qk: v is zero-padded
to qk for it, as transformers does for flash attention). Median of CUDA-event timings after 5
warm-ups; backward is (forward + backward) - forward.

    troupe bench attention --device cuda:0
    python3 tools/reference/bench_attention_torch.py --batch 4 --heads 16 --length 1024 --qk 96 --v 64
"""
import argparse

import torch

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cuda_timing import times_ms  # tools/reference/cuda_timing.py


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("batch", 4), ("heads", 16), ("length", 1024), ("qk", 96), ("v", 64),
                          ("iterations", 20)):
        parser.add_argument(f"--{name}", type=int, default=default)
    a = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    shape_qk = (a.batch, a.heads, a.length, a.qk)
    q = torch.randn(shape_qk, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(shape_qk, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn((a.batch, a.heads, a.length, a.v), device=dev, dtype=torch.bfloat16,
                    requires_grad=True)
    d_out = torch.randn((a.batch, a.heads, a.length, a.v), device=dev, dtype=torch.bfloat16)
    scale = a.qk ** -0.5
    pairs = a.batch * a.heads * a.length * (a.length + 1) / 2
    forward_flops = 2 * pairs * (a.qk + a.v)
    backward_flops = 2 * pairs * (3 * a.qk + 2 * a.v)
    print(f"PyTorch {torch.__version__} scaled_dot_product_attention on "
          f"{torch.cuda.get_device_name()}: batch {a.batch}, heads {a.heads}, length {a.length}, "
          f"qk {a.qk}, v {a.v}, causal, BF16")

    def measure(label, padded):
        vv = F.pad(v, (0, a.qk - a.v)) if padded else v
        dd = F.pad(d_out, (0, a.qk - a.v)) if padded else d_out

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)

        def both():
            out = F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)
            out.backward(dd)

        fw = times_ms(forward, a.iterations)
        fb = times_ms(both, a.iterations)
        f_ms, fb_ms = fw[len(fw) // 2], fb[len(fb) // 2]
        b_ms = fb_ms - f_ms
        print(f"  {label:<28} forward {f_ms:8.3f} ms {forward_flops / f_ms / 1e9:7.1f} TFLOP/s   "
              f"backward {b_ms:8.3f} ms {backward_flops / b_ms / 1e9:7.1f} TFLOP/s")

    measure("default backend", False)
    for name, backend in (("flash (v padded to qk)", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                measure(name, backend == SDPBackend.FLASH_ATTENTION and a.v != a.qk)
        except RuntimeError as e:
            print(f"  {name:<28} not available: {str(e).splitlines()[0][:100]}")


if __name__ == "__main__":
    main()
