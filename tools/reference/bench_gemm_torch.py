#!/usr/bin/env python3
"""PyTorch's GEMMs on the shapes of `troupe bench gemm`, on the same GPU, for the ratio.

BF16: torch.matmul(x, w.t()) (cuBLAS/cuBLASLt, FP32 accumulation, BF16 out). FP8: DeepSeek-V3's
block scaling through torch.nn.functional.scaled_mm with ScalingType.BlockWise1x128 for the
activation and BlockWise128x128 for the weight (cuBLASLt's VEC128 / BLK128x128 modes), BF16 out,
on operands cast beforehand. Medians of CUDA-event timings of 30 runs after 5 warm-ups.

    troupe bench gemm --json troupe.json && python3 tools/reference/bench_gemm_torch.py troupe.json

prints both and troupe / PyTorch for each shape (needs torch >= 2.10 on an sm_90 GPU).
"""
import json
import math
import sys

import torch

import torch.nn.functional as F

from cuda_timing import times_ms  # tools/reference/cuda_timing.py

SHAPES = [(m, n, k) for m in (128, 4096)
          for (n, k) in ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168),
                         (7168, 2048))] + [(8192, 8192, 8192)]


def median_ms(body, iterations=30):
    return times_ms(body, iterations)[iterations // 2]


def cast_tiles(x):
    """x[m, k] -> E4M3 codes and scales (amax/448 per 1x128 tile), scales [m, k/128]."""
    m, k = x.shape
    tiles = x.float().view(m, k // 128, 128)
    amax = tiles.abs().amax(dim=2).clamp(min=1e-4)
    codes = (tiles * (448.0 / amax).unsqueeze(2)).view(m, k).to(torch.float8_e4m3fn)
    return codes, amax / 448.0


def cast_blocks(w):
    """w[n, k] -> E4M3 codes and scales (amax/448 per 128x128 block, edge blocks zero-padded),
    scales [ceil(n/128), k/128]."""
    n, k = w.shape
    n_pad = math.ceil(n / 128) * 128
    padded = F.pad(w.float(), (0, 0, 0, n_pad - n))
    blocks = padded.view(n_pad // 128, 128, k // 128, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-4)
    codes = (blocks * (448.0 / amax)[:, None, :, None]).view(n_pad, k)[:n]
    return codes.to(torch.float8_e4m3fn).contiguous(), amax / 448.0


def main():
    troupe = {}
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            for r in json.load(f)["results"]:
                troupe[(r["m"], r["n"], r["k"])] = r
    device = torch.device("cuda:0")
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print(f"{'m':>5} {'n':>6} {'k':>6}  {'torch bf16':>10} {'torch fp8':>9}"
          + (f"  {'troupe bf16':>11} {'troupe fp8':>10} {'+cast':>6}  {'bf16 ratio':>10} "
             f"{'fp8 ratio':>9}" if troupe else ""))
    torch.manual_seed(0)
    for m, n, k in SHAPES:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        flops = 2.0 * m * n * k
        bf16_ms = median_ms(lambda: torch.matmul(x, w.t()))
        xq, xs = cast_tiles(x)
        wq, ws = cast_blocks(w)
        l4 = math.ceil(k // 128 / 4) * 4
        scale_a = xs.t().contiguous().t()                 # (m, k/128), outer-dim-major
        scale_b = F.pad(ws, (0, l4 - k // 128)).t()      # (L4, n/128) view of [n/128, L4]
        fp8_ms = median_ms(lambda: F.scaled_mm(
            xq, wq.t(), scale_a, F.ScalingType.BlockWise1x128, scale_b,
            F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16))
        tf = lambda ms: flops / (ms * 1e-3) / 1e12
        line = f"{m:>5} {n:>6} {k:>6}  {tf(bf16_ms):>10.1f} {tf(fp8_ms):>9.1f}"
        if (m, n, k) in troupe:
            r = troupe[(m, n, k)]
            line += (f"  {r['bf16_tflops']:>11.1f} {r['fp8_tflops']:>10.1f} "
                     f"{r['fp8_with_cast_tflops']:>6.1f}  {bf16_ms / r['bf16_ms']:>10.3f} "
                     f"{fp8_ms / r['fp8_ms']:>9.3f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
