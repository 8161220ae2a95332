#!/usr/bin/env python3
"""Training throughput of Hugging Face transformers' DeepseekV3ForCausalLM on one GPU: the
reference `troupe bench train --device cuda:0` is compared with (docs/benchmarks.md).

The model is built from the same config.json troupe trains (random initialisation), in BF16
(parameters, activations and AdamW state, as a plain `model.to(torch.bfloat16)` user would),
with transformers' own MoE path (`--experts grouped_mm`: tokens sorted by expert and one
torch._grouped_mm per projection), SDPA attention and fused AdamW. Each step is forward, backward
and the optimizer step on `--batch` x `--seq` random tokens; the median of `--steps` timed steps
after `--warmup` is printed with tokens/s, as one JSON line with --json. transformers has no MTP
module, so its step does the main model's work only (troupe's includes the MTP depth).

    python3 tools/reference/bench_train_hf.py --config topologies/models/small/config.json \
        --batch 8 --seq 1024 [--compile] [--json]
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def build(config_path, experts, attention):
    config = AutoConfig.from_pretrained(config_path)
    config.num_nextn_predict_layers = 0
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    kwargs = {"attn_implementation": attention, "torch_dtype": torch.bfloat16}
    try:
        model = AutoModelForCausalLM.from_config(config, experts_implementation=experts, **kwargs)
        used = experts
    except (TypeError, ValueError) as e:
        print(f"experts_implementation={experts} refused ({e}); using the default", file=sys.stderr)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
        used = "default"
    return model.to(device="cuda", dtype=torch.bfloat16), used


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--experts", default="grouped_mm")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, experts = build(args.config, args.experts, args.attention)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    run = torch.compile(step) if args.compile else step
    compile_start = time.perf_counter()
    for _ in range(args.warmup):
        run()
    torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - compile_start

    times = []
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    for _ in range(args.steps):
        start_event.record()
        loss = run()
        end_event.record()
        end_event.synchronize()
        times.append(start_event.elapsed_time(end_event) / 1000.0)
    median = statistics.median(times)
    tokens_per_step = args.batch * args.seq
    result = {
        "what": "transformers DeepseekV3ForCausalLM training step (bf16, fused AdamW)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "experts": experts,
        "attention": args.attention,
        "compiled": args.compile,
        "batch": args.batch,
        "seq": args.seq,
        "step_ms_median": median * 1e3,
        "step_ms_min": min(times) * 1e3,
        "step_ms_max": max(times) * 1e3,
        "tokens_per_second": tokens_per_step / median,
        "warmup_seconds": warmup_seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "final_loss": float(loss),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"transformers {result['transformers']} ({experts} experts, {args.attention}"
            f"{', compiled' if args.compile else ''}) on {result['gpu']}: {args.batch} x {args.seq}"
            f" tokens, {result['step_ms_median']:.1f} ms per step (median of {args.steps}; min"
            f" {result['step_ms_min']:.1f}, max {result['step_ms_max']:.1f}),"
            f" {result['tokens_per_second']:.0f} tokens/s, peak memory"
            f" {result['peak_memory_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
