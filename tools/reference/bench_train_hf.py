#!/usr/bin/env python3
"""Training throughput of Hugging Face transformers' DeepseekV3ForCausalLM on one GPU: the
reference `troupe bench train --device cuda:0` is compared with (docs/benchmarks.md).

The model is built from the same config.json troupe trains (random initialisation), in BF16
(parameters, activations and AdamW state, as a plain `model.to(torch.bfloat16)` user would),
with transformers' own MoE path (`--experts grouped_mm`: tokens sorted by expert and one
torch._grouped_mm per projection), SDPA attention and fused AdamW. Each step is forward, backward,
the global gradient-norm clip (`--clip`, default 1.0: troupe's `train.grad_clip` default and the
Trainer's `max_grad_norm` default; 0 leaves it out) and the optimizer step on `--batch` x `--seq`
random tokens; the median of `--steps` timed steps
after `--warmup` is printed with tokens/s, as one JSON line with --json. transformers has no MTP
module; the config's MTP depth is built from its parts (mtp_reference.py), so the step does
troupe's work, MTP included (`--no-mtp`: the main model only).

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

from mtp_reference import TrainingLoss, depths_of


def build(config_path, experts, attention, mtp):
    config = AutoConfig.from_pretrained(config_path)
    depths = depths_of(config) if mtp else 0
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
    model = model.to(device="cuda", dtype=torch.bfloat16)
    step_loss = TrainingLoss(model, depths).to(device="cuda", dtype=torch.bfloat16)
    return step_loss, used, depths


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
    parser.add_argument("--no-mtp", action="store_true", help="leave the MTP modules out")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="clip the global gradient norm to this (0: no clipping)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    step_loss, experts, depths = build(args.config, args.experts, args.attention,
                                       not args.no_mtp)
    step_loss.train()
    optimizer = torch.optim.AdamW(step_loss.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    vocab = step_loss.model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")

    def step():
        loss = step_loss(tokens)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(step_loss.parameters(), args.clip)
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
        "mtp_depths": depths,
        "parameters": sum(p.numel() for p in step_loss.parameters()),
        "attention": args.attention,
        "compiled": args.compile,
        "grad_clip": args.clip,
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
            f"{', compiled' if args.compile else ''}, MTP depth {depths}, gradient clip"
            f" {args.clip:g}) on {result['gpu']}:"
            f" {args.batch} x {args.seq}"
            f" tokens, {result['step_ms_median']:.1f} ms per step (median of {args.steps}; min"
            f" {result['step_ms_min']:.1f}, max {result['step_ms_max']:.1f}),"
            f" {result['tokens_per_second']:.0f} tokens/s, peak memory"
            f" {result['peak_memory_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
