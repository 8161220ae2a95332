#!/usr/bin/env python3
"""Prefill and decode throughput of Hugging Face transformers' generate with its KV cache: the
reference `troupe bench generate` is compared with (docs/benchmarks.md).

The model is built from the same config.json (random initialisation, FP32, no MTP module:
transformers has none), SDPA attention and transformers' default MoE path, on the CPU with
--threads threads or on a GPU. For each batch size, --prompt-tokens random tokens per sequence:
prefill is one forward with use_cache=True over the prompts; decode is `generate` (greedy, its
cache, --new-tokens tokens, EOS suppressed so every sequence runs to the end) minus that prefill.
The static batch's output tokens/s (the batch's new tokens over the whole `generate` call, its
prefill included: what a server without continuous batching delivers) is printed too. The medians
of --repeat runs after one warm-up are printed, as JSON with --json.

    python3 tools/reference/bench_generate_hf.py --config topologies/models/small-512/config.json \
        [--device cpu|cuda] [--threads N] [--batch 1,8,32] [--prompt-tokens 128] [--new-tokens 32]
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def build(config_path, device):
    config = AutoConfig.from_pretrained(config_path)
    config.num_nextn_predict_layers = 0
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device).eval()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(model, device, batch, prompt_tokens, new_tokens, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (batch, prompt_tokens), generator=generator).to(device)
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        model(input_ids=tokens, attention_mask=mask, use_cache=True)
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=0)
        sync(device)
        total = time.perf_counter() - start
    assert out.shape[1] == prompt_tokens + new_tokens
    return prefill, max(total - prefill, 1e-9), total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    model = build(args.config, args.device)
    run(model, args.device, 1, args.prompt_tokens, args.new_tokens, 99)  # warm-up
    results = []
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {args.device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    for batch in (int(b) for b in args.batch.split(",")):
        prefill, decode, whole = [], [], []
        for r in range(args.repeat):
            p, d, t = run(model, args.device, batch, args.prompt_tokens, args.new_tokens, r)
            prefill.append(batch * args.prompt_tokens / p)
            decode.append(batch * (args.new_tokens - 1) / d)
            whole.append(batch * args.new_tokens / t)
        p, d, g = statistics.median(prefill), statistics.median(decode), statistics.median(whole)
        results.append({"batch": batch, "prefill_tokens_per_second": p, "decode_tokens_per_second": d,
                        "generate_tokens_per_second": g})
        print(f"batch {batch:>3}: prefill {p:>9.1f} tokens/s (min {min(prefill):.1f}, max {max(prefill):.1f}), "
              f"decode {d:>8.1f} tokens/s (min {min(decode):.1f}, max {max(decode):.1f}); "
              f"static batch (generate, its prefill included) {g:.1f} output tokens/s "
              f"(min {min(whole):.1f}, max {max(whole):.1f}); medians of {args.repeat}", flush=True)
    if args.json:
        print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                          "device": args.device, "results": results}))


if __name__ == "__main__":
    main()
